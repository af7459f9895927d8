/* poet_port_log of every Cortex-M port: the port's diagnostics channel (cm_port_log). */
#include "cm.h"
#include "poet/port.h"

void poet_port_log(const char *msg) { cm_port_log(msg); }
