"""Pure tensor functions (no Keras layers, no state, no config). NHWC, xyxy pixel boxes."""
