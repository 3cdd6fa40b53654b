"""In-kernel users of GUP, modelled on their kernel code: io_uring fixed buffers, Direct IO,
process_vm_readv/writev and AF_XDP; RDMA memory registration (`rdma`, case 2 of
pin_user_pages.rst), a struct-page-only user (`struct_page_query`, case 4), a pin-and-write
user (`kernel_write`, case 5), VFIO type1 DMA mapping (`vfio`) and GPU host memory
registration (`gpu`, with a real-world misuse). Each pins through the public gup API, as
the kernel user does, and charges memory the way it does. Case 3 users pin nothing or
listen to MMU notifiers: the dmirror device of lib/test_hmm.c (`hmm_mirror`), RDMA
on-demand paging (`rdma_odp`), both on mm/hmm.py's hmm_range_fault(), and i915's
pinning userptr (`userptr`). `cases` runs each case's right driver beside its wrong-flag
twin as step records (case 3's in `case3`); `pinned_frames` checks the drivers'
invariant that no pinned frame is ever freed or migrated, `mirror_frames` the notifier
drivers' one that no device mapping points at a frame the process no longer maps."""
