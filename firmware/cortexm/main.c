/* The program of every Cortex-M port: what firmware/host/port_host.c's main does, without an OS. The port
 * brings up its clock, UART, counter and pager; the model's tables are checked against the runtime; the
 * parameters get their initial values; then the link serves the harness until EXIT. */
#include "cm.h"
#include "poet/poet.h"
#include "poet/port.h"

extern const poet_model poet_generated_model;

int main(void) {
    const poet_model *m = &poet_generated_model;
    poet_port_init();
    poet_status s = poet_model_validate(m);
    if (s != POET_OK) {
        char msg[128], *p = msg;
        p = cm_fmt_str(p, "poet: model tables are inconsistent: ");
        p = cm_fmt_str(p, poet_status_str(s));
        cm_fmt_str(p, "\n");
        cm_port_log(msg);
        poet_port_exit(POET_EXIT_BAD_MODEL);
    }
    s = poet_model_check_image(m);
    if (s != POET_OK) {
        cm_port_log("poet: the image is corrupted: its model tables or initial parameter values fail their "
                    "checksum\n");
        poet_port_exit(POET_EXIT_BAD_MODEL);
    }
    s = poet_model_reset(m);
    if (s != POET_OK) {
        char msg[128], *p = msg;
        p = cm_fmt_str(p, "poet: cannot put the initial parameters on storage: ");
        p = cm_fmt_str(p, poet_status_str(s));
        cm_fmt_str(p, "\n");
        cm_port_log(msg);
        poet_port_exit(POET_EXIT_BAD_MODEL);
    }
    int code = poet_serve(m);
    poet_port_flush();
    poet_port_exit(code);
    return code;
}
