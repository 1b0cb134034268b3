"""Where clips go: the real-time player (mixer over preallocated buffers), the DAW folder
writer and the pre-render cache."""
