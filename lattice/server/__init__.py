"""placeholder docstring; replaced below."""
