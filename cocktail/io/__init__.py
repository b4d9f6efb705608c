"""Files in and out: the safetensors format, checkpoints (folders, .bin, in memory), the streamed
writer, the output folder, side files and provenance."""
