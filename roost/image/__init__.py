"""Guest images: the built-in image assembled from Debian packages."""
