# POSIX calls used by the kernels, declared nogil.
cdef extern from "<unistd.h>" nogil:
    ctypedef long ssize_t
    ctypedef long off_t
    ssize_t pwrite(int fd, const void *buf, size_t count, off_t offset)

cdef extern from "<errno.h>" nogil:
    int errno
    enum: EINTR
    enum: EAGAIN
    enum: ETIMEDOUT

cdef extern from "<fcntl.h>" nogil:
    int sync_file_range(int fd, off_t offset, off_t nbytes, unsigned int flags)
    enum: SYNC_FILE_RANGE_WRITE

cdef extern from "<sys/socket.h>" nogil:
    ssize_t recv(int sockfd, void *buf, size_t n, int flags)
    enum: MSG_DONTWAIT

cdef extern from "<poll.h>" nogil:
    struct pollfd:
        int fd
        short events
        short revents
    ctypedef unsigned long nfds_t
    int poll(pollfd *fds, nfds_t nfds, int timeout)
    enum: POLLIN
