# POSIX calls used by the kernels, declared nogil.
cdef extern from "<unistd.h>" nogil:
    ctypedef long ssize_t
    ctypedef long off_t
    ssize_t pwrite(int fd, const void *buf, size_t count, off_t offset)

cdef extern from "<errno.h>" nogil:
    int errno
    enum: EINTR

cdef extern from "<fcntl.h>" nogil:
    int sync_file_range(int fd, off_t offset, off_t nbytes, unsigned int flags)
    enum: SYNC_FILE_RANGE_WRITE
