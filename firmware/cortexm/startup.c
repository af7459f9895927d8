/* Start-up shared by the Cortex-M ports: the vector table of the core exceptions (a port that enables a
 * device interrupt appends its vectors in section .vectors.irq, which sections.ld places right after), the
 * reset handler (FPU on, .data copied, .bss zeroed, stack painted) and a HardFault handler that reports the
 * faulting PC and stops with POET_EXIT_FAULT.
 *
 * Memory layout (sections.ld): the stack reserve is first in RAM and grows down towards the start of RAM, so
 * an overflow faults instead of silently overwriting .data/.bss (the arena and the parameters). */
#include <stdint.h>

#include "cm.h"

extern uint32_t __stack_start, __stack_end;
extern uint32_t __data_start, __data_end, __data_load;
extern uint32_t __bss_start, __bss_end;

int main(void);
void Reset_Handler(void);
void HardFault_Handler(void);
void SysTick_Handler(void); /* systick.c */
void cm_hardfault(const uint32_t *frame, uint32_t exc_return);

#define STACK_PAINT 0xA5A5A5A5u

static void default_handler(void) {
    cm_port_log("poet: unexpected exception");
    cm_port_fault_exit();
}

__attribute__((section(".vectors"), used)) void (*const cm_vectors[16])(void) = {
    (void (*)(void))(&__stack_end), /* initial stack pointer */
    Reset_Handler,
    default_handler, /* NMI */
    HardFault_Handler,
    default_handler, /* MemManage (v7-M) */
    default_handler, /* BusFault (v7-M) */
    default_handler, /* UsageFault (v7-M) */
    0,
    0,
    0,
    0,
    default_handler, /* SVCall */
    default_handler, /* DebugMonitor (v7-M) */
    0,
    default_handler, /* PendSV */
    SysTick_Handler,
};

__attribute__((noreturn)) void Reset_Handler(void) {
#if defined(__ARM_FP)
    CM_SCB_CPACR |= 0xFu << 20; /* CP10, CP11 full access: before any floating-point instruction */
    cm_dsb();
    cm_isb();
#endif
    volatile uint32_t *src = &__data_load, *dst = &__data_start;
    while (dst < &__data_end) *dst++ = *src++;
    for (dst = &__bss_start; dst < &__bss_end; dst++) *dst = 0;
    /* paint the stack below the current frame so that cm_stack_unused() can measure the high-water mark */
    uint32_t here;
    __asm__ volatile("mov %0, sp" : "=r"(here));
    for (dst = &__stack_start; (uint32_t)(uintptr_t)dst + 64u < here; dst++) *dst = STACK_PAINT;
    main();
    cm_port_fault_exit(); /* main never returns; if it did, stop */
}

uint32_t cm_stack_size(void) { return (uint32_t)((uintptr_t)&__stack_end - (uintptr_t)&__stack_start); }

uint32_t cm_stack_unused(void) {
    const uint32_t *p = &__stack_start;
    while (p < &__stack_end && *p == STACK_PAINT) p++;
    return (uint32_t)((uintptr_t)p - (uintptr_t)&__stack_start);
}

/* The exception frame is on the main stack (no thread stack is ever used). */
__attribute__((naked)) void HardFault_Handler(void) {
    __asm__ volatile(
        "mrs r0, msp\n"
        "mov r1, lr\n"
        "bl cm_hardfault\n");
}

char *cm_fmt_str(char *dst, const char *s) {
    while (*s) *dst++ = *s++;
    *dst = 0;
    return dst;
}

char *cm_fmt_hex(char *dst, uint32_t v) {
    static const char digits[] = "0123456789abcdef";
    *dst++ = '0';
    *dst++ = 'x';
    for (int i = 7; i >= 0; i--) *dst++ = digits[(v >> (4 * i)) & 0xFu];
    *dst = 0;
    return dst;
}

char *cm_fmt_dec(char *dst, uint32_t v) {
    char tmp[10];
    int n = 0;
    do {
        tmp[n++] = (char)('0' + v % 10u);
        v /= 10u;
    } while (v);
    while (n) *dst++ = tmp[--n];
    *dst = 0;
    return dst;
}

void cm_hardfault(const uint32_t *frame, uint32_t exc_return) {
    char msg[128], *p = msg;
    p = cm_fmt_str(p, "poet: HardFault at pc=");
    p = cm_fmt_hex(p, frame[6]);
    p = cm_fmt_str(p, " lr=");
    p = cm_fmt_hex(p, frame[5]);
#if CM_HAS_FAULT_STATUS
    p = cm_fmt_str(p, " cfsr=");
    p = cm_fmt_hex(p, CM_SCB_CFSR);
    p = cm_fmt_str(p, " hfsr=");
    p = cm_fmt_hex(p, CM_SCB_HFSR);
#endif
    p = cm_fmt_str(p, " exc_return=");
    p = cm_fmt_hex(p, exc_return);
    cm_fmt_str(p, "\n");
    cm_port_log(msg);
    cm_port_fault_exit();
}
