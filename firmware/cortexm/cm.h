/* Shared by every Cortex-M port: core registers (ARMv6-M and ARMv7E-M), exit codes, and the hooks a port
 * provides to the shared start-up, main loop and fault handler (firmware/cortexm/). No vendor headers. */
#ifndef POET_CM_H
#define POET_CM_H

#include <stdint.h>

#define CM_REG(addr) (*(volatile uint32_t *)(addr))

/* System control block and SysTick (both architectures) */
#define CM_SYST_CSR CM_REG(0xE000E010u) /* ENABLE bit0, TICKINT bit1, CLKSOURCE bit2, COUNTFLAG bit16 */
#define CM_SYST_RVR CM_REG(0xE000E014u)
#define CM_SYST_CVR CM_REG(0xE000E018u)
#define CM_SCB_ICSR CM_REG(0xE000ED04u)
#define CM_SCB_AIRCR CM_REG(0xE000ED0Cu)
#define CM_SCB_SHPR3 CM_REG(0xE000ED20u)
/* ARMv7-M only */
#define CM_SCB_CFSR CM_REG(0xE000ED28u)
#define CM_SCB_HFSR CM_REG(0xE000ED2Cu)
#define CM_SCB_BFAR CM_REG(0xE000ED38u)
#define CM_SCB_CPACR CM_REG(0xE000ED88u)
#define CM_DEMCR CM_REG(0xE000EDFCu)
#define CM_DWT_CTRL CM_REG(0xE0001000u)
#define CM_DWT_CYCCNT CM_REG(0xE0001004u)

#if defined(__ARM_ARCH_7M__) || defined(__ARM_ARCH_7EM__)
#define CM_HAS_FAULT_STATUS 1
#else
#define CM_HAS_FAULT_STATUS 0
#endif

/* Exit codes (QEMU exits with them through semihosting; target.py maps them to messages). */
#define POET_EXIT_OK 0
#define POET_EXIT_BAD_MODEL 4 /* poet_model_validate failed: poetc and the runtime disagree */
#define POET_EXIT_FAULT 70    /* HardFault (or another fault escalated to it) */

/* ---- hooks implemented by each port (firmware/<port>/port.c) ------------------------------------------ */
/* A line of diagnostics outside the protocol: QEMU writes it to its stderr through semihosting; a real board
 * writes it on the UART (only before the link starts, or when the program is about to stop). */
void cm_port_log(const char *msg);
/* A fault happened: report it (cm_port_log has been called) and stop for good. */
void cm_port_fault_exit(void) __attribute__((noreturn));

/* ---- shared helpers ---------------------------------------------------------------------------------- */
/* 64-bit count of SysTick ticks at the core clock (the 24-bit counter's wraps are counted by its exception).
 * cm_systick_start() is called once by the port; SysTick_Handler lives in systick.c. */
void cm_systick_start(void);
uint64_t cm_systick_count(void);
void cm_systick_hook(void); /* weak, empty: called on every wrap (every 2^24 core cycles) */

/* Bytes of the stack reserve never written since reset (the stack is painted at reset). */
uint32_t cm_stack_unused(void);
uint32_t cm_stack_size(void);

/* Format helpers for diagnostics (no printf: it would pull in newlib's stdio and its RAM). */
char *cm_fmt_hex(char *dst, uint32_t v);
char *cm_fmt_dec(char *dst, uint32_t v);
char *cm_fmt_str(char *dst, const char *s);

static inline void cm_dsb(void) { __asm__ volatile("dsb" ::: "memory"); }
static inline void cm_isb(void) { __asm__ volatile("isb" ::: "memory"); }
static inline void cm_irq_disable(void) { __asm__ volatile("cpsid i" ::: "memory"); }
static inline void cm_irq_enable(void) { __asm__ volatile("cpsie i" ::: "memory"); }

#endif
