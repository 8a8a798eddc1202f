# Declarations for the SHA-256 of the system's OpenSSL libcrypto (linked, not
# vendored).  The low-level SHA256_CTX API is used on purpose: its state is a
# plain struct, so the Python layer can checkpoint a running hash as bytes.
cdef extern from "<openssl/sha.h>" nogil:
    ctypedef struct SHA256_CTX:
        pass
    int SHA256_Init(SHA256_CTX *c)
    int SHA256_Update(SHA256_CTX *c, const void *data, size_t length)
    int SHA256_Final(unsigned char *md, SHA256_CTX *c)
    unsigned char *SHA256(const unsigned char *d, size_t n, unsigned char *md)


cdef extern from "<openssl/crypto.h>" nogil:
    unsigned long OpenSSL_version_num()
