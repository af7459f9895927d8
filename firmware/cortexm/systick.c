/* A 64-bit tick count from SysTick at the core clock: the 24-bit down-counter runs free (reload 0xFFFFFF)
 * and its exception counts the wraps. Under QEMU's -icount shift=0 the core clock is virtual time, one
 * instruction per nanosecond, so these ticks are exact instruction counts (at the SysTick's resolution).
 *
 * Test hook: building with -DPOET_FAULT_TEST=1 makes the first tick read of a RUN fault (a store to an
 * unmapped address), =2 makes it hang; the harness must report the fault or the hang, not a protocol error. */
#include "cm.h"

#define SYST_RELOAD 0xFFFFFFu
#define ICSR_PENDSTSET (1u << 26)

static volatile uint32_t wraps;

/* A port may sample another counter on every wrap (nrf52840: extends the DWT cycle counter to 64 bits). */
__attribute__((weak)) void cm_systick_hook(void) {}

void SysTick_Handler(void) {
    wraps++;
    cm_systick_hook();
}

void cm_systick_start(void) {
    CM_SYST_CSR = 0;
    CM_SYST_RVR = SYST_RELOAD;
    CM_SYST_CVR = 0;
    CM_SCB_SHPR3 &= 0x00FFFFFFu; /* highest priority: a wrap is never counted late */
    CM_SYST_CSR = 7u;            /* core clock, exception on wrap, enabled */
}

uint64_t cm_systick_count(void) {
#if defined(POET_FAULT_TEST) && POET_FAULT_TEST == 1
    *(volatile uint32_t *)0xFFFFFFF0u = 0; /* not a mapped address: BusFault -> HardFault */
#elif defined(POET_FAULT_TEST) && POET_FAULT_TEST == 2
    for (;;) __asm__ volatile("nop");
#endif
    cm_irq_disable();
    uint32_t w = wraps, v = CM_SYST_CVR;
    if (CM_SCB_ICSR & ICSR_PENDSTSET) { /* wrapped, exception not taken yet: count it here */
        v = CM_SYST_CVR;
        w++;
    }
    cm_irq_enable();
    return ((uint64_t)w << 24) + (SYST_RELOAD - v);
}
