"""Facts about the Empatica E4 that more than one stage relies on.

A ground floor below the stages: ingest, replay, preprocess and storage may import it, and it
imports none of them, so a fact stated here is stated once.
"""

#: Smallest non-zero conductance the BLE EDA characteristic can express (µS): it carries skin
#: resistance in 24 bits, and an open circuit (no skin) saturates them (e4-facts.md 1.3).
BLE_EDA_FLOOR_US = 1e6 / (2**24 - 1)  # 0.0596 µS

#: EDA below this (µS) means the electrodes do not touch skin. Off the wrist an exported file
#: reads exactly 0 and the BLE path reads its floor, 0.0596 µS; 0.06 sits just above both. On
#: the ten real WESAD wrists no worn second stays below it (0.07 would flag six; Kleckner et
#: al.'s 0.05 misses the BLE floor).
OFF_WRIST_EDA_US = 0.06
