"""In-kernel users of GUP, modelled on their kernel code: io_uring fixed buffers, Direct IO,
process_vm_readv/writev and AF_XDP. Each pins through the public gup API, as the kernel
user does, and charges memory the way it does."""
