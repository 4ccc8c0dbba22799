"""Container images: definition files, builds, and the image cache."""
