"""Network blocks shared by the products: FiLM and SE residual blocks, sub-pixel upsampling, fixed filters,
frequency attention and the lifting of X-ray features into 3D."""
