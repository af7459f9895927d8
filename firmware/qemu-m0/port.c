/* QEMU microbit (nRF51822: Cortex-M0, ARMv6-M without FPU like the SAMD21 of the MKR1000; 16 KB RAM, 256 KB
 * flash). Its UART is served by QEMU on a TCP socket; the pager is a host file reached through semihosting;
 * ticks are instructions, counted by SysTick under -icount shift=0. The pager, exit and diagnostics are in
 * cortexm/semihost.c. The UART code is the nRF51's (TX P0.24, RX P0.25 on a real micro:bit). */
#include "../cortexm/cm.h"
#include "../cortexm/semihost.h"
#include "poet/port.h"

#define UART0_BASE 0x40002000u
#define UART_STARTRX CM_REG(UART0_BASE + 0x000u)
#define UART_STARTTX CM_REG(UART0_BASE + 0x008u)
#define UART_RXDRDY CM_REG(UART0_BASE + 0x108u)
#define UART_TXDRDY CM_REG(UART0_BASE + 0x11Cu)
#define UART_INTENSET CM_REG(UART0_BASE + 0x304u)
#define UART_INTENCLR CM_REG(UART0_BASE + 0x308u)
#define UART_ENABLE CM_REG(UART0_BASE + 0x500u)
#define UART_PSELTXD CM_REG(UART0_BASE + 0x50Cu)
#define UART_PSELRXD CM_REG(UART0_BASE + 0x514u)
#define UART_RXD CM_REG(UART0_BASE + 0x518u)
#define UART_TXD CM_REG(UART0_BASE + 0x51Cu)
#define UART_BAUDRATE CM_REG(UART0_BASE + 0x524u)
#define UART_INT_RXDRDY (1u << 2)
#define NVIC_ISER0 CM_REG(0xE000E100u)
#define UART0_IRQ 2 /* nRF51 interrupt map */

/* QEMU's nRF51 SysTick runs at the 16 MHz HCLK; under -icount shift=0 one instruction takes 1 ns. */
#define SYSTICK_HZ 16000000u

/* The RX interrupt only wakes the core from WFI while it waits for input; the handler masks it again
 * (the event stays set for poet_port_getc to see). */
static void uart0_irq(void) { UART_INTENCLR = UART_INT_RXDRDY; }

__attribute__((section(".vectors.irq"), used)) void (*const qemu_m0_irq_vectors[UART0_IRQ + 1])(void) = {
    [UART0_IRQ] = uart0_irq,
};

void poet_port_init(void) {
    UART_PSELTXD = 24u;
    UART_PSELRXD = 25u;
    UART_BAUDRATE = 0x01D7E000u; /* 115200 */
    UART_ENABLE = 4u;
    UART_STARTTX = 1u;
    UART_STARTRX = 1u;
    NVIC_ISER0 = 1u << UART0_IRQ;
    cm_systick_start();
}

int poet_port_getc(void) {
    for (;;) {
        cm_irq_disable(); /* no wake-up may slip between the test and the WFI */
        if (UART_RXDRDY) break;
        UART_INTENSET = UART_INT_RXDRDY;
        __asm__ volatile("wfi");
        cm_irq_enable();
    }
    cm_irq_enable();
    UART_RXDRDY = 0; /* clear before reading RXD: the read re-raises it while bytes remain */
    return (int)(UART_RXD & 0xFFu);
}

void poet_port_write(const uint8_t *buf, size_t n) {
    for (size_t i = 0; i < n; i++) {
        UART_TXDRDY = 0;
        UART_TXD = buf[i];
        while (!UART_TXDRDY) {
        }
    }
}

void poet_port_flush(void) {}

/* 62.5 instructions per SysTick tick: exact in integers as count * 125 / 2 */
uint64_t poet_port_ticks(void) { return cm_systick_count() * (2000000000u / SYSTICK_HZ) / 2u; }

const char *poet_port_name(void) { return "qemu-m0"; }
