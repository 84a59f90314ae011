"""What to fix next, from the cached features of a run's images: likely label errors found out of
sample, what more images of each class would buy, and which unlabelled images to label next."""
