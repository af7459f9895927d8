#include "poet/status.h"

const char *poet_status_str(poet_status s) {
    switch (s) {
#define POET_STATUS_STR_(name, value, text) \
    case POET_##name:                       \
        return text;
        POET_STATUSES(POET_STATUS_STR_)
#undef POET_STATUS_STR_
    }
    return "unknown status";
}
