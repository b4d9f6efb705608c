"""Does the merge help? Data sets as their owners ship them, metrics, evaluate and sweep."""
