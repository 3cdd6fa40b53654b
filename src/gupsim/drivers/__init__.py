"""In-kernel users of GUP, modelled on their kernel code: io_uring fixed buffers, Direct IO,
process_vm_readv/writev and AF_XDP; RDMA memory registration (`rdma`, case 2 of
pin_user_pages.rst), a struct-page-only user (`struct_page_query`, case 4), a pin-and-write
user (`kernel_write`, case 5), VFIO type1 DMA mapping (`vfio`) and GPU host memory
registration (`gpu`, with a real-world misuse). Each pins through the public gup API, as
the kernel user does, and charges memory the way it does. `cases` runs each case's right
driver beside its wrong-flag twin as step records; `pinned_frames` checks the drivers'
invariant that no pinned frame is ever freed or migrated."""
