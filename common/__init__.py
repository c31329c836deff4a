"""The ground floor every package may stand on: user errors, asyncio entry points, argument
types and lazy package surfaces. It imports no other project package."""
