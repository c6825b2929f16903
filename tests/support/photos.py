"""Real photos as backbone inputs, and the relative error the backbone parity tests bound."""
import numpy as np
from skimage import data as skdata
from skimage.transform import resize

TORCHVISION_MEAN = np.array([0.485, 0.456, 0.406], np.float32)
TORCHVISION_STD = np.array([0.229, 0.224, 0.225], np.float32)


def photo(name, hw):
    """skimage photo resized to hw, normalised as torchvision's detection transform: [1,H,W,3]."""
    image = getattr(skdata, name)()[..., :3]
    image = resize(image, hw, anti_aliasing=True).astype(np.float32)  # float in [0, 1]
    return ((image - TORCHVISION_MEAN) / TORCHVISION_STD)[None]


def relative_error(ours, theirs):
    """max |ours - theirs| / max |theirs|."""
    return np.max(np.abs(ours - theirs)) / np.max(np.abs(theirs))
