#!/bin/sh
# Write deploy/mosquitto/passwd (hashed) for the users of deploy/mosquitto/acl, with the
# passwords MQTT_PASSWORD (user m3sense, the store) and HA_MQTT_PASSWORD (user homeassistant)
# from deploy/.env (or the environment). Uses a local mosquitto_passwd if there is one,
# else the broker's image. Run from anywhere: deploy/mosquitto/make-passwd.sh
set -eu
here=$(cd "$(dirname "$0")" && pwd)
env_file=${ENV_FILE:-$here/../.env}
if [ -f "$env_file" ]; then
    set -a; . "$env_file"; set +a
fi
: "${MQTT_PASSWORD:?set MQTT_PASSWORD in deploy/.env}"
: "${HA_MQTT_PASSWORD:?set HA_MQTT_PASSWORD in deploy/.env}"
out=$here/passwd
umask 077
if command -v mosquitto_passwd >/dev/null 2>&1; then
    mosquitto_passwd -c -b "$out" m3sense "$MQTT_PASSWORD"
    mosquitto_passwd -b "$out" homeassistant "$HA_MQTT_PASSWORD"
else
    docker run --rm -v "$here:/work" eclipse-mosquitto:2.0 sh -c \
        'mosquitto_passwd -c -b /work/passwd m3sense "$1" && mosquitto_passwd -b /work/passwd homeassistant "$2"' \
        sh "$MQTT_PASSWORD" "$HA_MQTT_PASSWORD"
fi
chmod 644 "$out"   # the broker runs as its own user in the container; the hashes are salted
echo "wrote $out (users m3sense, homeassistant)"
