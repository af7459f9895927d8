/* QEMU mps2-an386 (Cortex-M4F): the emulated stand-in for the nRF52840 (same core, RAM and flash limits,
 * set by the linker script). UART0 (CMSDK APB UART) is served by QEMU on a TCP socket; the pager is a host
 * file reached through semihosting; ticks are instructions, counted by SysTick under -icount shift=0 (the
 * DWT cycle counter is not emulated). The pager, exit and diagnostics are in cortexm/semihost.c. */
#include "../cortexm/cm.h"
#include "../cortexm/semihost.h"
#include "poet/port.h"

#define UART0_BASE 0x40004000u
#define UART_DATA CM_REG(UART0_BASE + 0x00u)
#define UART_STATE CM_REG(UART0_BASE + 0x04u) /* bit0 TX full, bit1 RX full */
#define UART_CTRL CM_REG(UART0_BASE + 0x08u)  /* bit0 TX enable, bit1 RX enable */
#define UART_INTSTATUS CM_REG(UART0_BASE + 0x0Cu) /* write 1 to clear; bit1 RX */
#define UART_BAUDDIV CM_REG(UART0_BASE + 0x10u)
#define UART_CTRL_RX_IRQ 8u
#define NVIC_ISER0 CM_REG(0xE000E100u)
#define UART0_RX_IRQ 0 /* AN386 interrupt map */

/* The an386's SysTick runs at the 25 MHz system clock; under -icount shift=0 one instruction takes 1 ns. */
#define SYSTICK_HZ 25000000u
#define INSTR_PER_TICK (1000000000u / SYSTICK_HZ)

/* The RX interrupt only wakes the core from WFI while it waits for the harness: QEMU then delivers input
 * about twice as fast as to a core that spins on the status register. */
static void uart0_rx_irq(void) { UART_INTSTATUS = 2u; }

__attribute__((section(".vectors.irq"), used)) void (*const qemu_m4_irq_vectors[UART0_RX_IRQ + 1])(void) = {
    uart0_rx_irq,
};

void poet_port_init(void) {
    UART_BAUDDIV = 16u; /* QEMU ignores the rate, but wants a valid divider before enabling */
    UART_CTRL = 3u | UART_CTRL_RX_IRQ;
    NVIC_ISER0 = 1u << UART0_RX_IRQ;
    cm_systick_start();
}

int poet_port_getc(void) {
    for (;;) {
        cm_irq_disable(); /* no wake-up may slip between the test and the WFI */
        if (UART_STATE & 2u) break;
        __asm__ volatile("wfi");
        cm_irq_enable();
    }
    cm_irq_enable();
    return (int)(UART_DATA & 0xFFu);
}

void poet_port_write(const uint8_t *buf, size_t n) {
    for (size_t i = 0; i < n; i++) {
        while (UART_STATE & 1u) {
        }
        UART_DATA = buf[i];
    }
}

void poet_port_flush(void) {}

uint64_t poet_port_ticks(void) { return cm_systick_count() * INSTR_PER_TICK; }

const char *poet_port_name(void) { return "qemu-m4"; }
