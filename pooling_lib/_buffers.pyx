# cython: language_level=3
"""A small cache of freed output buffers, so that a large output does not cost fresh pages on every call.

Why: the first write to a freshly mapped page makes the operating system stop the program, find a page and fill
it with zeros before the write goes ahead. glibc's ``malloc`` keeps and reuses freed blocks below 32 MiB, so
repeated calls get memory that is already mapped; a block above that is mapped fresh for every call and given
back when it is freed. On this course's benchmark input, a float64 gradient is 51 MB: the page faults and
zeroing then cost about as much as the backward kernel itself.

How: ``empty(shape, dtype)`` creates the array with NumPy while a NumPy allocation policy (a
``PyDataMem_Handler``, NumPy's documented hook, NEP 49) is the current one for this thread. The array is an
ordinary NumPy array that owns its memory; NumPy calls the policy's ``free`` when the array (and every view of it)
is gone. That ``free`` keeps a block of at least ``MIN_BYTES`` in the cache, up to a total of ``max_bytes``
(oldest out first), and the policy's ``malloc`` hands a cached block of exactly the requested size back out.
Everything else, and every miss, goes to NumPy's default policy, so a block behaves as NumPy's own would.

A block is cached only once NumPy has freed it, so no array still in use ever shares memory with a new one.
The cache is protected by the GIL, which NumPy holds whenever it allocates or frees array memory; a
free-threaded Python build (no GIL) runs with the cache off.
"""
from cpython.pycapsule cimport PyCapsule_GetPointer, PyCapsule_New
from cpython.ref cimport PyObject
from libc.stdint cimport uint8_t
from libc.string cimport strncpy

cimport numpy as cnp
import numpy as np

cnp.import_array()

cdef extern from "numpy/arrayobject.h":
    ctypedef struct PyDataMemAllocator:
        void* ctx
        void* (*malloc)(void* ctx, size_t size) noexcept nogil
        void* (*calloc)(void* ctx, size_t nelem, size_t elsize) noexcept nogil
        void* (*realloc)(void* ctx, void* ptr, size_t new_size) noexcept nogil
        void (*free)(void* ctx, void* ptr, size_t size) noexcept nogil

    ctypedef struct PyDataMem_Handler:
        char name[127]
        uint8_t version
        PyDataMemAllocator allocator

    object PyDataMem_SetHandler(object handler)     # returns the previous policy (a new reference)
    PyObject* PyDataMem_DefaultHandler                # NumPy's default policy, a capsule

cdef extern from *:
    """
    #ifdef Py_GIL_DISABLED
    #define PL_HAVE_GIL 0
    #else
    #define PL_HAVE_GIL 1
    #endif
    """
    int PL_HAVE_GIL

cdef enum:
    SLOTS = 64                       # at most this many cached blocks

MIN_BYTES = 1 << 20                  # smaller blocks are left to malloc, which recycles them well
DEFAULT_MAX_BYTES = 256 << 20

cdef size_t _min_bytes = MIN_BYTES
cdef size_t _max_bytes = DEFAULT_MAX_BYTES if PL_HAVE_GIL else 0
cdef void* _blocks[SLOTS]            # cached blocks, oldest first
cdef size_t _sizes[SLOTS]
cdef int _count = 0
cdef size_t _held = 0                # bytes in the cache
cdef size_t _hits = 0
cdef PyDataMem_Handler* _default = NULL
cdef PyDataMem_Handler _handler


cdef void _drop_oldest() noexcept nogil:
    """Give the oldest cached block back to NumPy's default policy."""
    global _count, _held
    cdef int k
    _default.allocator.free(_default.allocator.ctx, _blocks[0], _sizes[0])
    _held -= _sizes[0]
    for k in range(1, _count):
        _blocks[k - 1] = _blocks[k]
        _sizes[k - 1] = _sizes[k]
    _count -= 1


cdef void* _malloc(void* ctx, size_t size) noexcept nogil:
    global _count, _held, _hits
    cdef int k, m
    cdef void* p
    if size >= _min_bytes:
        for k in range(_count - 1, -1, -1):       # the most recently freed block first: its pages are warmest
            if _sizes[k] == size:
                p = _blocks[k]
                for m in range(k + 1, _count):
                    _blocks[m - 1] = _blocks[m]
                    _sizes[m - 1] = _sizes[m]
                _count -= 1
                _held -= size
                _hits += 1
                return p
    return _default.allocator.malloc(_default.allocator.ctx, size)


cdef void* _calloc(void* ctx, size_t nelem, size_t elsize) noexcept nogil:
    return _default.allocator.calloc(_default.allocator.ctx, nelem, elsize)


cdef void* _realloc(void* ctx, void* ptr, size_t new_size) noexcept nogil:
    return _default.allocator.realloc(_default.allocator.ctx, ptr, new_size)


cdef void _free(void* ctx, void* ptr, size_t size) noexcept nogil:
    global _count, _held
    if ptr == NULL or size < _min_bytes or size > _max_bytes:
        _default.allocator.free(_default.allocator.ctx, ptr, size)
        return
    while _count > 0 and (_count == SLOTS or _held + size > _max_bytes):
        _drop_oldest()
    _blocks[_count] = ptr
    _sizes[_count] = size
    _count += 1
    _held += size


_default = <PyDataMem_Handler*> PyCapsule_GetPointer(<object> PyDataMem_DefaultHandler, "mem_handler")
strncpy(_handler.name, b"pooling_lib_buffer_cache", 126)
_handler.version = 1
_handler.allocator.ctx = NULL
_handler.allocator.malloc = _malloc
_handler.allocator.calloc = _calloc
_handler.allocator.realloc = _realloc
_handler.allocator.free = _free
_policy = PyCapsule_New(&_handler, "mem_handler", NULL)


def empty(shape, dtype):
    """``np.empty(shape, dtype)`` whose memory may come from, and goes back to, the cache."""
    previous = PyDataMem_SetHandler(_policy)
    try:
        return np.empty(shape, dtype=dtype)
    finally:
        PyDataMem_SetHandler(previous)


def set_max_bytes(size_t n):
    """Let the cache hold up to ``n`` bytes (0 turns it off and frees what it holds); returns the previous limit.
    (:func:`pooling_lib.cython_tier.set_buffer_cache` checks the argument.) Without a GIL (a free-threaded build)
    the cache stays off whatever ``n`` is."""
    global _max_bytes
    previous = _max_bytes
    _max_bytes = n if PL_HAVE_GIL else 0
    while _count > 0 and _held > _max_bytes:
        _drop_oldest()
    return previous


def info():
    """``{'max_bytes', 'held_bytes', 'blocks', 'hits'}``: the limit, what the cache holds now, and how many
    allocations it has served since the module was loaded."""
    return {"max_bytes": _max_bytes, "held_bytes": _held, "blocks": _count, "hits": _hits}
