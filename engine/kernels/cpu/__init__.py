"""CPU kernels of our own (C++ built with torch's cpp_extension, cached on disk)."""
