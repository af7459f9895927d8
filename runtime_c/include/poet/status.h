/* Status codes shared by kernels, interpreter, pager and link. One list: the enum, the strings and poetc's
 * Python side (which parses this file) all come from POET_STATUSES. */
#ifndef POET_STATUS_H
#define POET_STATUS_H

#define POET_STATUSES(X)                                                      \
    X(OK, 0, "ok")                                                            \
    X(ERR_SHAPE, 1, "tensor sizes do not match the kernel's parameters")     \
    X(ERR_ARG, 2, "bad argument (label out of range, null pointer)")        \
    X(ERR_NOT_RESIDENT, 3, "a tensor was used while not resident in RAM")   \
    X(ERR_PROGRAM, 4, "malformed program (bad opcode, index or offset)")     \
    X(ERR_PAGER_IO, 5, "the pager backend failed to read or write")          \
    X(ERR_PAGE_CHECKSUM, 6, "a paged-in block failed its checksum")          \
    X(ERR_CRC, 7, "frame checksum mismatch")                                 \
    X(ERR_OVERSIZE, 8, "frame longer than the target's buffer")              \
    X(ERR_UNKNOWN_CMD, 9, "unknown command")                                 \
    X(ERR_RANGE, 10, "tensor id, offset or length out of range")             \
    X(ERR_READONLY, 11, "tensor cannot be written")                          \
    X(ERR_NONFINITE, 12, "loss is not finite")                              \
    X(ERR_IMAGE_CHECKSUM, 13, "the image's model tables or initial parameter values fail their checksum") \
    X(ERR_NO_CHECKPOINT, 14, "no valid checkpoint on storage")              \
    X(ERR_NONFINITE_PARAM, 15, "an update made a parameter NaN or infinite") \
    X(ERR_IN_FLIGHT, 16, "a tensor or its bytes were used while a transfer was in flight (a missing WAIT)")

typedef enum {
#define POET_STATUS_ENUM_(name, value, text) POET_##name = value,
    POET_STATUSES(POET_STATUS_ENUM_)
#undef POET_STATUS_ENUM_
} poet_status;

const char *poet_status_str(poet_status s);

#endif
