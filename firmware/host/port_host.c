/* Host port: the generated program as an ordinary process. The byte stream is a TCP connection (one client,
 * reached by the harness as socket://127.0.0.1:PORT) or stdin/stdout (for a pty). The pager is a file, or RAM,
 * and a program's transfers move on a worker thread while the interpreter runs kernels (pager_overlap). */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <pthread.h>
#include <sched.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/types.h>
#include <time.h>
#include <unistd.h>
#ifdef __linux__
#include <sys/prctl.h>
#endif

#include "poet/poet.h"
#include "poet/port.h"

extern const poet_model poet_generated_model;

static int in_fd = 0, out_fd = 1;
static uint8_t inbuf[4096];
static size_t in_len, in_pos;
static uint8_t outbuf[8192];
static size_t out_len;

static FILE *pager_file;
static uint8_t *pager_ram;
static uint32_t pager_size;
static long corrupt_write = -1; /* test-only fault injection: corrupt the data of this page-out (0-based) */
static long data_writes;
static long drop_from = -1; /* test-only: from this data write on (0-based), acknowledge writes but keep old data */
static uint32_t pager_late; /* test pager: a transfer completes at its N-th poll (0: at once) */

int poet_port_getc(void) {
    if (in_pos == in_len) {
        poet_port_flush();
        ssize_t n;
        do {
            n = read(in_fd, inbuf, sizeof inbuf);
        } while (n < 0 && errno == EINTR);
        if (n <= 0) return -1;
        in_len = (size_t)n;
        in_pos = 0;
    }
    return inbuf[in_pos++];
}

void poet_port_flush(void) {
    size_t done = 0;
    while (done < out_len) {
        ssize_t n = write(out_fd, outbuf + done, out_len - done);
        if (n < 0 && errno == EINTR) continue;
        if (n <= 0) poet_port_exit(0); /* the harness went away */
        done += (size_t)n;
    }
    out_len = 0;
}

void poet_port_write(const uint8_t *buf, size_t n) {
    while (n > 0) {
        if (out_len == sizeof outbuf) poet_port_flush();
        size_t k = sizeof outbuf - out_len < n ? sizeof outbuf - out_len : n;
        memcpy(outbuf + out_len, buf, k);
        out_len += k;
        buf += k;
        n -= k;
    }
}

uint64_t poet_port_ticks(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000000ull + (uint64_t)ts.tv_nsec;
}

uint32_t poet_port_tick_hz(void) { return 1000000000u; }

const char *poet_port_name(void) { return "host"; }

uint32_t poet_port_pager_bytes(void) { return pager_size; }

static poet_status pager_write(uint32_t addr, const void *buf, uint32_t n) {
    if ((uint64_t)addr + n > pager_size) return POET_ERR_PAGER_IO;
    static int dropping; /* a data write was dropped: so is its CRC, the 4-byte write after it */
    if (n > 4) dropping = drop_from >= 0 && data_writes >= drop_from;
    if (dropping) { /* a device that says yes and keeps the old bytes */
        if (n > 4) data_writes++;
        return POET_OK;
    }
    if (pager_ram) {
        memcpy(pager_ram + addr, buf, n);
    } else if (fseek(pager_file, (long)addr, SEEK_SET) != 0 || fwrite(buf, 1, n, pager_file) != n) {
        return POET_ERR_PAGER_IO;
    }
    if (n > 4 && data_writes++ == corrupt_write) { /* flip a byte of the stored copy, as a bad card would */
        uint8_t bad = (uint8_t)(((const uint8_t *)buf)[n / 2] ^ 0x5A);
        if (pager_ram) {
            pager_ram[addr + n / 2] = bad;
        } else if (fseek(pager_file, (long)(addr + n / 2), SEEK_SET) != 0 || fwrite(&bad, 1, 1, pager_file) != 1) {
            return POET_ERR_PAGER_IO;
        }
    }
    return POET_OK;
}

static poet_status pager_read(uint32_t addr, void *buf, uint32_t n) {
    if ((uint64_t)addr + n > pager_size) return POET_ERR_PAGER_IO;
    if (pager_ram) {
        memcpy(buf, pager_ram + addr, n);
        return POET_OK;
    }
    if (fflush(pager_file) != 0 || fseek(pager_file, (long)addr, SEEK_SET) != 0 ||
        fread(buf, 1, n, pager_file) != n)
        return POET_ERR_PAGER_IO;
    return POET_OK;
}

/* The file and the RAM are reached by the worker and by the synchronous calls (start-up, the link): one at a time. */
static pthread_mutex_t io_lock = PTHREAD_MUTEX_INITIALIZER;

poet_status poet_port_pager_write(uint32_t addr, const void *buf, uint32_t n) {
    pthread_mutex_lock(&io_lock);
    poet_status s = pager_write(addr, buf, n);
    pthread_mutex_unlock(&io_lock);
    return s;
}

poet_status poet_port_pager_read(uint32_t addr, void *buf, uint32_t n) {
    pthread_mutex_lock(&io_lock);
    poet_status s = pager_read(addr, buf, n);
    pthread_mutex_unlock(&io_lock);
    return s;
}

/* ---- the worker: a program's transfers, one queue, in the order started ----------------------------------------
 * poet_port_pager_start queues the record and returns; the worker moves the data and the trailer through the
 * file (or RAM) and marks the record finished in port_state (XFER_FINISHED | status), under the lock. Only
 * poet_port_pager_poll, on the interpreter's thread, turns that into x->done and x->status, so the runtime's
 * fields are written by one thread and the lock orders the worker's bytes before the interpreter reads them.
 * The runtime keeps at most POET_MAX_XFERS records in flight (the board's pager_queue). */
#define XFER_QUEUED 0u
#define XFER_FINISHED 0x80000000u
#define QUEUE_LEN 8

static pthread_mutex_t q_lock = PTHREAD_MUTEX_INITIALIZER;
static pthread_cond_t q_work = PTHREAD_COND_INITIALIZER;
static pthread_t worker;
static int worker_running, worker_stop;
static poet_xfer *queue[QUEUE_LEN];
static unsigned q_head, q_len;

static void *pager_worker(void *arg) {
    (void)arg;
    pthread_mutex_lock(&q_lock);
    for (;;) {
        while (q_len == 0 && !worker_stop) pthread_cond_wait(&q_work, &q_lock);
        if (q_len == 0) break; /* stopping, and nothing left to move */
        poet_xfer *x = queue[q_head];
        const uint32_t addr = x->addr, n = x->n;
        uint8_t *buf = x->buf;
        const int write = x->write;
        uint8_t trailer[4];
        if (write) memcpy(trailer, x->trailer, 4);
        pthread_mutex_unlock(&q_lock);
        poet_status s;
        if (write) {
            s = poet_port_pager_write(addr, buf, n);
            if (s == POET_OK) s = poet_port_pager_write(addr + n, trailer, 4);
        } else {
            s = poet_port_pager_read(addr, buf, n);
            if (s == POET_OK) s = poet_port_pager_read(addr + n, trailer, 4);
        }
        pthread_mutex_lock(&q_lock);
        if (!write) memcpy(x->trailer, trailer, 4);
        x->port_state = XFER_FINISHED | (uint32_t)s;
        q_head = (q_head + 1) % QUEUE_LEN;
        q_len--;
    }
    pthread_mutex_unlock(&q_lock);
    return NULL;
}

static void worker_join(void) {
    if (!worker_running) return;
    pthread_mutex_lock(&q_lock);
    worker_stop = 1;
    pthread_cond_signal(&q_work);
    pthread_mutex_unlock(&q_lock);
    pthread_join(worker, NULL);
    worker_running = 0;
}

/* With --pager-late N the runtime's late-completion test pager replaces the worker (transfers complete at
 * their N-th poll, in the order they are waited for). */
poet_status poet_port_pager_start(poet_xfer *x) {
    if ((uint64_t)x->addr + x->n + 4u > pager_size) return POET_ERR_PAGER_IO;
    if (pager_late) {
        poet_pager_late_start(x, pager_late);
        return POET_OK;
    }
    pthread_mutex_lock(&q_lock);
    if (!worker_running) {
        worker_stop = 0;
        if (pthread_create(&worker, NULL, pager_worker, NULL) != 0) {
            pthread_mutex_unlock(&q_lock);
            return poet_pager_now(x); /* no thread: move it here, synchronously */
        }
        worker_running = 1;
    }
    if (q_len == QUEUE_LEN) {
        pthread_mutex_unlock(&q_lock);
        return POET_ERR_IN_FLIGHT;
    }
    x->done = 0;
    x->port_state = XFER_QUEUED;
    queue[(q_head + q_len) % QUEUE_LEN] = x;
    q_len++;
    pthread_cond_signal(&q_work);
    pthread_mutex_unlock(&q_lock);
    return POET_OK;
}

void poet_port_pager_poll(poet_xfer *x) {
    if (pager_late) {
        poet_pager_late_poll(x);
        return;
    }
    if (x->done) return;
    pthread_mutex_lock(&q_lock);
    const uint32_t st = x->port_state;
    pthread_mutex_unlock(&q_lock);
    if (st & XFER_FINISHED) {
        x->status = (poet_status)(st & ~XFER_FINISHED);
        x->done = 1;
    } else {
        sched_yield(); /* the runtime polls in a loop to wait: let the worker have the core */
    }
}

void poet_port_exit(int code) {
    worker_join(); /* the runtime drains its transfers after every step: the queue is empty here */
    if (pager_file) fclose(pager_file);
    free(pager_ram);
    pager_file = NULL;
    pager_ram = NULL;
    exit(code);
}

void poet_port_log(const char *msg) {
    fputs(msg, stdout);
    fflush(stdout);
}

#if defined(POET_APP) && POET_APP
/* An application (poet/train.h) owns main: the pager is the file $POET_PAGER_FILE (default poet-pager.bin in the
 * working directory), kept when it exists, so checkpoints survive a restart as on a board's storage. */
void poet_port_init(void) {
    const poet_model *m = &poet_generated_model;
    if (pager_file) return;
    const char *path = getenv("POET_PAGER_FILE");
    if (!path || !*path) path = "poet-pager.bin";
    pager_size = m->ckpt_addr + 2u * m->ckpt_slot_bytes;
    pager_file = fopen(path, "r+b");
    if (!pager_file) pager_file = fopen(path, "w+b");
    if (!pager_file) {
        fprintf(stderr, "poet-host: cannot open pager file %s: %s\n", path, strerror(errno));
        exit(2);
    }
}
#else
void poet_port_init(void) {}


static int listen_once(int port) {
    int s = socket(AF_INET, SOCK_STREAM, 0);
    if (s < 0) return -1;
    int one = 1;
    setsockopt(s, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
    struct sockaddr_in a;
    memset(&a, 0, sizeof a);
    a.sin_family = AF_INET;
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    a.sin_port = htons((uint16_t)port);
    socklen_t alen = sizeof a;
    if (bind(s, (struct sockaddr *)&a, sizeof a) != 0 || listen(s, 1) != 0 ||
        getsockname(s, (struct sockaddr *)&a, &alen) != 0) {
        close(s);
        return -1;
    }
    printf("poet-host: listening on 127.0.0.1:%d\n", ntohs(a.sin_port));
    fflush(stdout);
    int c;
    do {
        c = accept(s, NULL, NULL);
    } while (c < 0 && errno == EINTR);
    close(s);
    return c;
}

static void usage(const char *argv0) {
    fprintf(stderr,
            "usage: %s (--listen PORT | --stdio) [--pager FILE | --pager-ram] [--pager-bytes N]\n"
            "  --listen PORT   serve one TCP client on 127.0.0.1:PORT (0 picks a free port; printed)\n"
            "  --stdio         speak the protocol on stdin/stdout (e.g. a pty)\n"
            "  --pager FILE    page to FILE (created); default: RAM\n"
            "  --corrupt-page-write N   test only: corrupt the stored data of the N-th page-out (0-based)\n"
            "  --drop-page-writes N     test only: from the N-th data write on, acknowledge writes, keep old data\n"
            "  --pager-late N  test only: a transfer completes at its N-th poll, not when it starts\n",
            argv0);
}

int main(int argc, char **argv) {
    const poet_model *m = &poet_generated_model;
    int port = -1, use_stdio = 0;
    const char *pager_path = NULL;
    long long pager_bytes = (long long)m->storage_bytes;
    for (int i = 1; i < argc; i++) {
        if (!strcmp(argv[i], "--listen") && i + 1 < argc) {
            port = atoi(argv[++i]);
        } else if (!strcmp(argv[i], "--stdio")) {
            use_stdio = 1;
        } else if (!strcmp(argv[i], "--pager") && i + 1 < argc) {
            pager_path = argv[++i];
        } else if (!strcmp(argv[i], "--pager-ram")) {
            pager_path = NULL;
        } else if (!strcmp(argv[i], "--corrupt-page-write") && i + 1 < argc) {
            corrupt_write = atol(argv[++i]);
        } else if (!strcmp(argv[i], "--drop-page-writes") && i + 1 < argc) {
            drop_from = atol(argv[++i]);
        } else if (!strcmp(argv[i], "--pager-late") && i + 1 < argc) {
            pager_late = (uint32_t)atol(argv[++i]);
        } else if (!strcmp(argv[i], "--pager-bytes") && i + 1 < argc) {
            pager_bytes = atoll(argv[++i]);
        } else {
            usage(argv[0]);
            return 2;
        }
    }
    if ((port < 0) == !use_stdio) {
        usage(argv[0]);
        return 2;
    }
#ifdef __linux__
    prctl(PR_SET_PDEATHSIG, SIGTERM); /* never outlive the harness */
#endif
    signal(SIGPIPE, SIG_IGN);
    if (pager_bytes < 0 || pager_bytes > 0xFFFFFFFFll) {
        fprintf(stderr, "poet-host: bad --pager-bytes\n");
        return 2;
    }
    pager_size = (uint32_t)pager_bytes;
    if (pager_path) {
        pager_file = fopen(pager_path, "w+b");
        if (!pager_file) {
            fprintf(stderr, "poet-host: cannot open pager file %s: %s\n", pager_path, strerror(errno));
            return 2;
        }
    } else {
        pager_ram = (uint8_t *)calloc(pager_size ? pager_size : 1, 1);
        if (!pager_ram) return 2;
    }
    poet_status s = poet_model_validate(m);
    if (s != POET_OK) {
        fprintf(stderr, "poet-host: model tables are inconsistent: %s\n", poet_status_str(s));
        poet_port_exit(4);
    }
    s = poet_model_check_image(m);
    if (s != POET_OK) {
        fprintf(stderr, "poet-host: the image is corrupted: %s\n", poet_status_str(s));
        poet_port_exit(4);
    }
    s = poet_model_reset(m);
    if (s != POET_OK) {
        fprintf(stderr, "poet-host: cannot put the initial parameters on storage: %s\n", poet_status_str(s));
        poet_port_exit(4);
    }
    poet_port_init();
    if (!use_stdio) {
        int c = listen_once(port);
        if (c < 0) {
            fprintf(stderr, "poet-host: cannot listen on port %d: %s\n", port, strerror(errno));
            poet_port_exit(2);
        }
        in_fd = out_fd = c;
    }
    int code = poet_serve(m);
    poet_port_flush();
    poet_port_exit(code);
    return code;
}
#endif /* POET_APP */
