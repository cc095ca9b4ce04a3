"""Predicting Pixiv popularity from the image: the user's second system, on frozen CLIP embeddings.

    sidecar.py   one gallery-dl `--write-metadata` JSON sidecar -> one table row (or why not)
    ingest.py    a dataset folder (+ an existing metadata.sqlite3) -> DATASET/.database/metadata.sqlite3
    records.py   the `illusts` table read back as numpy columns (AI rule, ages, groups)
    targets.py   popularity targets with scalers fitted on the training split only
    splits.py    by artist, by time, and a deliberately ungrouped split (the leak test)
    synth.py     a synthetic dataset in the document's layout with a planted relation
    rows.py      stored embeddings read per batch (training memory bounded by the batch)
    training.py  config YAML -> data -> the Trainer of cityclf_core.train
    evaluate.py  Spearman (primary) and friends, the metadata-only baseline, the ablation table

The head kinds (kinds/popularity.py, with their networks in
kinds/popularity_nets.py: single-task, multi-task with learned uncertainty
weights, multi-task + attention) make the trained heads load and score through
`cityclf score` and the nodes like any other head, without importing this package.
"""
