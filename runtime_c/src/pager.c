/* Pager helpers for ports: synchronous transfers for ports without DMA, and the late-completion test pager. */
#include <string.h>

#include "poet/port.h"

poet_status poet_pager_now(poet_xfer *x) {
    poet_status s;
    if (x->write) {
        s = poet_port_pager_write(x->addr, x->buf, x->n);
        if (s == POET_OK) s = poet_port_pager_write(x->addr + x->n, x->trailer, 4);
    } else {
        s = poet_port_pager_read(x->addr, x->buf, x->n);
        if (s == POET_OK) s = poet_port_pager_read(x->addr + x->n, x->trailer, 4);
    }
    x->status = s;
    x->done = 1;
    return s;
}

void poet_pager_late_start(poet_xfer *x, uint32_t polls) {
    x->done = 0;
    x->status = POET_OK;
    x->port_state = polls;
    if (!x->write) { /* nothing has arrived yet: a kernel reading it now would see NaNs */
        memset(x->buf, 0xFF, x->n);
        memset(x->trailer, 0xFF, 4);
    }
    if (polls == 0) poet_pager_now(x);
}

void poet_pager_late_poll(poet_xfer *x) {
    if (x->done) return;
    if (x->port_state > 1) {
        x->port_state--;
        return;
    }
    poet_pager_now(x); /* a write copies the RAM bytes only now: reused bytes would be stored */
}
