"""The bad-input tables: each is run by its test (test_segment_inputs.py, test_train.py) and matched
against the README's tables by test_readme.py."""

from __future__ import annotations

import shutil

import numpy as np

from helpers import make_folder, nan_image, write

BAD_INPUTS = [  # (input, argv with {root} {out} {ckpt} placeholders, words the message must contain)
    ("INPUT that does not exist", "{root}/missing {out}", "not found"),
    ("INPUT that is not Zarr, OME-Zarr or TIFF", "{root}/notzarr {out}", "expected a Zarr"),
    ("1-D array", "{root}/line.zarr {out}", "found shape (50,)"),
    ("4-D array", "{root}/4d.zarr {out}", "found shape (2, 2, 20, 20)"),
    ("--axes other than yx, cyx, yxc", "{root}/gray.zarr {out} --axes zyx", "expected axes yx, cyx, yxc"),
    ("--level the image does not have", "{root}/ome.zarr {out} --level 3", "level"),
    ("channels unlike the checkpoint's", "{root}/rgb.zarr {out}", "expected 1 channel(s)"),
    ("dtype unlike the checkpoint's", "{root}/u16.zarr {out}", "pass --input-range LO,HI"),
    ("--input-range not LO,HI", "{root}/gray.zarr {out} --input-range 5", "expected LO,HI"),
    ("--input-range with LO >= HI", "{root}/gray.zarr {out} --input-range 9,1", "expected LO < HI"),
    ("--block not a multiple of --chunk", "{root}/gray.zarr {out} --chunk 64 --block 100", "multiple of --chunk"),
    ("--shard not a multiple of --chunk", "{root}/gray.zarr {out} --chunk 64 --shard 96", "multiple of --chunk 64"),
    ("OUTPUT missing", "{root}/gray.zarr", "OUTPUT: expected an output location"),
    ("OUTPUT inside INPUT", "{root}/gray.zarr {root}/gray.zarr/labels", "expected a location outside INPUT"),
    ("OUTPUT holding something else", "{root}/gray.zarr {root}/rgb.zarr", "pass --overwrite to replace it"),
    ("--as-label on a plain array", "{root}/gray.zarr --as-label cells", "expected an OME-Zarr image as INPUT"),
    ("--as-label with an OUTPUT", "{root}/ome.zarr {out} --as-label cells", "expected no OUTPUT"),
    ("--manifest and INPUT OUTPUT", "{root}/gray.zarr {out} --manifest {root}/manifest.txt",
     "expected either --manifest or INPUT OUTPUT"),
    ("--manifest line without two fields", "--manifest {root}/manifest.txt", "expected 'INPUT OUTPUT'"),
    ("--storage-option without =", "{root}/gray.zarr {out} --storage-option anon", "expected KEY=VALUE"),
    ("--checkpoint that does not exist", "{root}/gray.zarr {out} --ckpt {root}/missing.safetensors",
     "missing.safetensors: file not found"),
    ("--checkpoint that is a pickle", "{root}/gray.zarr {out} --ckpt {root}/model.pt",
     "model.pt: expected a safetensors file, found a Python pickle"),
    ("--object-classes without --objects", "{root}/gray.zarr {out} --object-classes 1",
     "expected together with --objects"),
    ("--object-classes the checkpoint does not have", "{root}/gray.zarr {out} --objects --object-classes 7",
     "expected classes 0..1 or names"),
    ("--min-area below 0", "{root}/gray.zarr {out} --objects --min-area -1", "expected a number of pixels >= 0"),
    ("--roi that does not exist", "{root}/gray.zarr {out} --roi {root}/missing-roi.png",
     "not found (expected a 2-D Zarr array or a PNG/TIFF/JPEG mask)"),
    ("--roi that is not a 2-D mask", "{root}/gray.zarr {out} --roi {root}/4d.zarr", "expected a 2-D mask (y, x)"),
    ("--cog in a folder that does not exist", "{root}/gray.zarr {out} --cog {root}/no/such/labels.tif",
     "expected a writable folder"),
    ("--cog not a .tif path", "{root}/gray.zarr {out} --cog {root}/labels.png", "expected a path ending in .tif or .tiff"),
    ("--cog at a URL that takes no writes", "{root}/gray.zarr {out} --cog http://127.0.0.1:9/labels.tif",
     "found http:// refusing them"),
    ("no level within 25 % of the checkpoint's pixel size", "{root}/ome.zarr {out} --ckpt {root}/at-2um.safetensors",
     "expected a pyramid level within 25% of the checkpoint's pixel size 2 µm"),
]


BAD_DATA = {  # (case: (make the folder, words the message must contain)); the README shows them
    "missing folder": (lambda root: None, "not found"),
    "no masks folder": (lambda root: (make_folder(root), shutil.rmtree(root / "masks")),
                        "expected a subfolder masks/"),
    "no image files": (lambda root: [(root / s).mkdir(parents=True) for s in ("images", "masks")],
                     "found none"),
    "image without mask": (lambda root: (make_folder(root), (root / "masks" / "img1.png").unlink()),
                           "img1.png: has no mask"),
    "mask without image": (lambda root: (make_folder(root), (root / "images" / "img2.png").unlink()),
                           "img2.png: has no image"),
    "sizes differ": (lambda root: (make_folder(root), write(root / "masks" / "img1.png", np.zeros((64, 70), np.uint8))),
                     "expected the image's size 64x72, found 64x70"),
    "class out of range": (lambda root: (make_folder(root), write(root / "masks" / "img0.png",
                                                                  np.full((64, 72), 2, np.uint8))),
                           "expected class indices 0..1 (2 classes), found 2"),
    "NaN in an image": (lambda root: (make_folder(root, n=2), nan_image(root)), "expected finite values, found NaN"),
    "unreadable image": (lambda root: (make_folder(root), (root / "images" / "img0.png").write_bytes(b"not a png")),
                   "cannot be read as PNG"),
    "mixed channels": (lambda root: (make_folder(root), write(root / "images" / "img1.png",
                                                              np.zeros((64, 72, 3), np.uint8))),
                       "expected every image like img0 (1 channel(s), uint8), found img1 with 3"),
    "float mask": (lambda root: (make_folder(root, n=2), write(root / "masks" / "img0.tif",
                                                              np.zeros((64, 72), np.float32)),
                                 (root / "masks" / "img0.png").unlink()),
                   "expected integer labels, found dtype float32"),
    "no object in any instance mask (--instances)": (  # a third item: options the case adds
        lambda root: [write(root / sub / f"img{i}.png", np.zeros((30, 30), np.uint8))
                      for sub in ("images", "masks") for i in range(3)],
        "expected instance masks with at least one object", "--instances"),
}


BAD_OPTIONS = [  # (options, words the message must contain); the README's bad-input table shows them
    (["--tile", "45"], "tile: input size 45 is not valid"),
    (["--val-fraction", "0.9"], "leaves none for training"),
    (["--instances", "--classes", "3"], "2 classes with instance masks"),
    (["--class-names", "a,b,c", "--classes", "2"], "expected 2 names for --classes 2, found 3"),
    (["--resume", "/nonexistent.safetensors"], "file not found"),
    (["--augment", "-1"], "augmentation: expected"),
    (["--device", "tpu"], "device: expected cpu, cuda, cuda:N or auto, found 'tpu'"),
    (["--device", "cuda:99"], "device: cuda:99 requested, but torch finds"),
    (["--pixel-size", "0"], "--pixel-size: expected a pixel size > 0, found 0.0"),
    (["--minutes", "0"], "expected minutes > 0, found 0"),
    (["--minutes", "-2"], "expected minutes > 0, found -2"),
]
