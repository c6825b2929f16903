"""``python -m keras_maskrcnn.export``: see ``keras_maskrcnn.export.command``."""
from keras_maskrcnn.export.command import main

if __name__ == "__main__":
    main()
