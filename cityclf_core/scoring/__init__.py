"""The path an image takes, from pixels to a head's verdict; nothing above it is imported here.

    crops.py      the crop plan: the whole image, or five tiles
    images.py     decoding image files (and IMAGE tensors) to RGB arrays
    encoders.py   the Encoder interface; CLIP models in memory (ComfyUI's, transformers')
    embedding.py  one CLIP pass over many images' views, chunked and batched
    heads.py      Head: a network and its kind (what its outputs mean), carried as an object
    reduce.py     per image, per output: mean / median / max / min over the views
    results.py    HeadResult: one head's verdict on one image; resolve_head_name: a head named among results
    pipeline.py   ScoringModel: heads bound to encoders and crop policies; the one scoring path
"""
