# cython: language_level=3, boundscheck=False, wraparound=False, initializedcheck=False, cdivision=True, embedsignature=True
"""Hash, write and receive kernels for chunkpull: the hot loop, with the GIL released.

Every function checks its arguments with the GIL held, runs only the C hash
or pwrite loop inside ``with nogil:``, and raises (OSError with errno,
ValueError) after the GIL is back.  Buffers and file descriptors belong to
the Python layer: the kernels borrow them for one call, never keep them, and
never open or close anything.  There is no policy here (no digest
comparison, no retry, no file naming): ``chunkpull.chunks`` owns that.

SHA-256 comes from the system's OpenSSL libcrypto through its low-level
SHA256_CTX API, whose state is a plain struct: ``sha256_init`` hands it to
Python as a bytearray, so a running hash can be checkpointed and resumed.
"""

from libc.string cimport memcpy
from libc.errno cimport EIO

from libcrypto cimport SHA256_CTX, SHA256_Init, SHA256_Update, SHA256_Final, OpenSSL_version_num
from _posix cimport pwrite, errno, EINTR, off_t, ssize_t, sync_file_range, SYNC_FILE_RANGE_WRITE
from _posix cimport recv, MSG_DONTWAIT, poll, pollfd, POLLIN, EAGAIN, ETIMEDOUT

import os as _os

from blake3 import blake3 as _blake3

SHA256_STATE_SIZE = sizeof(SHA256_CTX)
# What a saved state is only valid with: the libcrypto that wrote it (its
# SHA256_CTX layout).  Resume records carry it, so another build re-hashes
# the prefix from disk instead of trusting bytes it cannot read.
SHA256_STATE_FORMAT = f"openssl-{OpenSSL_version_num():x}-sha256ctx-{sizeof(SHA256_CTX)}"

# Fused kernels hash a slice and write it while it is still in the CPU cache.
cdef enum:
    SLICE = 256 * 1024

cdef const unsigned char _EMPTY[1]


cdef inline const unsigned char* _ptr(const unsigned char[::1] buf) noexcept:
    # &buf[0] is undefined for an empty view; hand out a valid dummy instead.
    return &buf[0] if buf.shape[0] else _EMPTY


cdef int _pwrite_all(int fd, const unsigned char *p, size_t n, off_t offset) noexcept nogil:
    """Write all n bytes at offset; return 0 or an errno value."""
    cdef ssize_t w
    while n > 0:
        w = pwrite(fd, p, n, offset)
        if w < 0:
            if errno == EINTR:
                continue
            return errno
        if w == 0:
            return EIO
        p += w
        n -= <size_t>w
        offset += w
    return 0


cdef int _sha256_pwrite(SHA256_CTX *ctx, int fd, const unsigned char *p, size_t n, off_t offset) noexcept nogil:
    cdef size_t step
    cdef int err
    while n > 0:
        step = n if n < SLICE else SLICE
        SHA256_Update(ctx, p, step)
        err = _pwrite_all(fd, p, step, offset)
        if err:
            return err
        p += step
        n -= step
        offset += <off_t>step
    return 0


cdef inline void _load(SHA256_CTX *ctx, const unsigned char[::1] state) except *:
    if state.shape[0] != sizeof(SHA256_CTX):
        raise ValueError(f"sha256 state must be {sizeof(SHA256_CTX)} bytes, got {state.shape[0]}")
    memcpy(ctx, &state[0], sizeof(SHA256_CTX))


cdef inline void _store(unsigned char[::1] state, SHA256_CTX *ctx) noexcept:
    memcpy(&state[0], ctx, sizeof(SHA256_CTX))


cdef inline _raise_oserror(int err):
    raise OSError(err, _os.strerror(err))


def sha256(const unsigned char[::1] data):
    """Return the 32-byte SHA-256 digest of data."""
    cdef unsigned char md[32]
    cdef SHA256_CTX ctx
    cdef const unsigned char *p = _ptr(data)
    cdef size_t n = data.shape[0]
    with nogil:
        SHA256_Init(&ctx)
        SHA256_Update(&ctx, p, n)
        SHA256_Final(md, &ctx)
    return md[:32]


def blake3(const unsigned char[::1] data):
    """Return the 32-byte BLAKE3 digest of data (the blake3 package drops the GIL)."""
    return _blake3(data).digest()


def sha256_init():
    """Return a fresh SHA-256 state as a bytearray of SHA256_STATE_SIZE bytes."""
    cdef SHA256_CTX ctx
    SHA256_Init(&ctx)
    state = bytearray(sizeof(SHA256_CTX))
    _store(state, &ctx)
    return state


def sha256_update(unsigned char[::1] state, const unsigned char[::1] data):
    """Feed data into the running state (in place).  Not thread-safe per state."""
    cdef SHA256_CTX ctx
    _load(&ctx, state)
    cdef const unsigned char *p = _ptr(data)
    cdef size_t n = data.shape[0]
    with nogil:
        SHA256_Update(&ctx, p, n)
    _store(state, &ctx)


def sha256_final(const unsigned char[::1] state):
    """Return the digest of everything fed to state so far; state is left unchanged."""
    cdef SHA256_CTX ctx
    cdef unsigned char md[32]
    _load(&ctx, state)
    SHA256_Final(md, &ctx)
    return md[:32]


def pwrite_all(int fd, const unsigned char[::1] data, long long offset):
    """Write every byte of data to fd at offset (retrying short writes and EINTR)."""
    if offset < 0:
        raise ValueError("offset must be >= 0")
    cdef const unsigned char *p = _ptr(data)
    cdef size_t n = data.shape[0]
    cdef int err
    with nogil:
        err = _pwrite_all(fd, p, n, <off_t>offset)
    if err:
        _raise_oserror(err)


def sha256_update_pwrite(unsigned char[::1] state, int fd, const unsigned char[::1] data, long long offset):
    """Write data to fd at offset and feed it into the running state, in one pass."""
    if offset < 0:
        raise ValueError("offset must be >= 0")
    cdef SHA256_CTX ctx
    _load(&ctx, state)
    cdef const unsigned char *p = _ptr(data)
    cdef size_t n = data.shape[0]
    cdef int err
    with nogil:
        err = _sha256_pwrite(&ctx, fd, p, n, <off_t>offset)
    if err:
        # The state is not stored back: a failed write must not advance the hash.
        _raise_oserror(err)
    _store(state, &ctx)


def start_writeback(int fd, long long offset, long long n):
    """Ask the kernel to start writing fd's dirty pages in [offset, offset+n) to disk.

    Asynchronous (SYNC_FILE_RANGE_WRITE): it returns at once, and a later
    fsync then has little left to wait for.  Errors are ignored: this is
    only a hint, and fsync reports real I/O errors.
    """
    with nogil:
        sync_file_range(fd, <off_t>offset, <off_t>n, SYNC_FILE_RANGE_WRITE)


cdef size_t _recv_full(int fd, unsigned char *p, size_t n, int timeout_ms, int *err) noexcept nogil:
    """Receive into p until n bytes, the peer's EOF, or a failure; return the count, *err = 0, ETIMEDOUT or errno."""
    cdef size_t got = 0
    cdef ssize_t r
    cdef pollfd pfd
    pfd.fd = fd
    pfd.events = POLLIN
    err[0] = 0
    while got < n:
        # Try first: when bytes are waiting (the common case on a busy stream) no poll() is needed.
        r = recv(fd, p + got, n - got, MSG_DONTWAIT)
        if r > 0:
            got += <size_t>r
            continue
        if r == 0:
            break
        if errno == EINTR:
            continue
        if errno != EAGAIN:  # (EWOULDBLOCK is EAGAIN on Linux)
            err[0] = errno
            break
        pfd.revents = 0
        r = poll(&pfd, 1, timeout_ms)  # an EINTR restarts the wait: the timeout bounds each wait, as a socket's does
        if r < 0:
            if errno == EINTR:
                continue
            err[0] = errno
            break
        if r == 0:
            err[0] = ETIMEDOUT
            break
    return got


def recv_full(int fd, unsigned char[::1] buf, long long n, double timeout_s):
    """Receive from socket fd into buf until n bytes (n < 0: len(buf)) arrived or the peer closed; return the count.

    Each wait for bytes is bounded by timeout_s (< 0: no bound), whether
    the socket is blocking or not (Python's sockets with a timeout are
    non-blocking underneath).  Bytes that arrived before a failure are
    returned; with none, a timeout raises TimeoutError and other failures
    OSError, so the caller sees the failure on its next call.
    """
    cdef size_t want = buf.shape[0] if n < 0 or n > buf.shape[0] else <size_t>n
    cdef int timeout_ms = -1 if timeout_s < 0 else (<int>(timeout_s * 1000.0 + 0.999) if timeout_s < 2000000.0 else 2000000000)
    cdef int err = 0
    cdef size_t got = 0
    if want == 0:
        return 0
    with nogil:
        got = _recv_full(fd, &buf[0], want, timeout_ms, &err)
    if got or not err:
        return got
    if err == ETIMEDOUT:
        raise TimeoutError(err, "timed out")
    _raise_oserror(err)

