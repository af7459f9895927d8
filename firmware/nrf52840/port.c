/* Nordic nRF52840-DK, bare metal (no SDK): 64 MHz Cortex-M4F, 256 KB RAM, 1 MB flash.
 *
 *   link     UARTE0 on the DK's virtual COM port (J-Link OB): TX P0.06, RX P0.08, RTS P0.05, CTS P0.07, with
 *            hardware flow control, 115200 baud (POET_UART_BAUD), EasyDMA one byte at a time on receive
 *   ticks    DWT cycle counter (core cycles at 64 MHz), extended to 64 bits on every SysTick wrap
 *   pager    SD card over SPIM2 on the DK's Arduino header (SCK P1.15 = D13, MISO P1.14 = D12,
 *            MOSI P1.13 = D11, CS P1.12 = D10), raw 512-byte blocks from block POET_SD_FIRST_BLOCK; the
 *            programs' transfers run in the background, each data block moved by SPIM2's EasyDMA while the
 *            core computes (sdcard.c's sd_async_*, polled by the runtime between instructions); or, built
 *            with -DPOET_PAGER_FLASH=1 (make PAGER=flash), internal flash through the NVMC, in the pages the
 *            linker script reserves after the image (cortexm/flashpager.h)
 *   marker   P1.10 (Arduino D8) is high from a RUN's first tick reading until its reply starts: wired to a
 *            Power Profiler Kit II's logic input D0 it frames each step in the current trace (--meter)
 *   exit     the core resets (ready for the next session)
 * Register addresses: nRF52840 Product Specification v1.7. */
#include "../cortexm/cm.h"
#include "../cortexm/flashpager.h"
#include "../cortexm/sdcard.h"
#include "poet/port.h"

#define CORE_HZ 64000000u

#ifndef POET_UART_BAUD_REG
#define POET_UART_BAUD_REG 0x01D60000u /* UARTE BAUDRATE for 115200 (actual 115108) */
#endif
#ifndef POET_SD_FIRST_BLOCK
#define POET_SD_FIRST_BLOCK 8192u /* 4 MiB into the card, clear of the partition table */
#endif
#ifndef POET_PAGER_BYTES
#define POET_PAGER_BYTES 0x80000000u
#endif

/* ---- peripherals --------------------------------------------------------------------------------------- */
#define CLOCK_BASE 0x40000000u
#define CLOCK_TASKS_HFCLKSTART CM_REG(CLOCK_BASE + 0x000u)
#define CLOCK_EVENTS_HFCLKSTARTED CM_REG(CLOCK_BASE + 0x100u)

#define P0_BASE 0x50000000u
#define P1_BASE 0x50000300u
#define GPIO_OUTSET(port) CM_REG((port) + 0x508u)
#define GPIO_OUTCLR(port) CM_REG((port) + 0x50Cu)
#define GPIO_PIN_CNF(port, pin) CM_REG((port) + 0x700u + 4u * (pin))
#define PIN_OUTPUT 3u /* DIR output, input buffer disconnected */
#define PIN_INPUT 0u  /* DIR input, input buffer connected */
#define PSEL(port, pin) (((port) << 5) | (pin)) /* CONNECT (bit 31) = 0: connected */

#define UARTE0_BASE 0x40002000u
#define UARTE_TASKS_STARTRX CM_REG(UARTE0_BASE + 0x000u)
#define UARTE_TASKS_STARTTX CM_REG(UARTE0_BASE + 0x008u)
#define UARTE_EVENTS_ENDRX CM_REG(UARTE0_BASE + 0x110u)
#define UARTE_EVENTS_ENDTX CM_REG(UARTE0_BASE + 0x120u)
#define UARTE_ENABLE CM_REG(UARTE0_BASE + 0x500u)
#define UARTE_PSEL_RTS CM_REG(UARTE0_BASE + 0x508u)
#define UARTE_PSEL_TXD CM_REG(UARTE0_BASE + 0x50Cu)
#define UARTE_PSEL_CTS CM_REG(UARTE0_BASE + 0x510u)
#define UARTE_PSEL_RXD CM_REG(UARTE0_BASE + 0x514u)
#define UARTE_BAUDRATE CM_REG(UARTE0_BASE + 0x524u)
#define UARTE_RXD_PTR CM_REG(UARTE0_BASE + 0x534u)
#define UARTE_RXD_MAXCNT CM_REG(UARTE0_BASE + 0x538u)
#define UARTE_TXD_PTR CM_REG(UARTE0_BASE + 0x544u)
#define UARTE_TXD_MAXCNT CM_REG(UARTE0_BASE + 0x548u)
#define UARTE_CONFIG CM_REG(UARTE0_BASE + 0x56Cu)
#define UART_TX_PIN 6u
#define UART_RX_PIN 8u
#define UART_RTS_PIN 5u
#define UART_CTS_PIN 7u

#define SPIM2_BASE 0x40023000u
#define SPIM_TASKS_START CM_REG(SPIM2_BASE + 0x010u)
#define SPIM_EVENTS_END CM_REG(SPIM2_BASE + 0x118u)
#define SPIM_ENABLE CM_REG(SPIM2_BASE + 0x500u)
#define SPIM_PSEL_SCK CM_REG(SPIM2_BASE + 0x508u)
#define SPIM_PSEL_MOSI CM_REG(SPIM2_BASE + 0x50Cu)
#define SPIM_PSEL_MISO CM_REG(SPIM2_BASE + 0x510u)
#define SPIM_FREQUENCY CM_REG(SPIM2_BASE + 0x524u)
#define SPIM_RXD_PTR CM_REG(SPIM2_BASE + 0x534u)
#define SPIM_RXD_MAXCNT CM_REG(SPIM2_BASE + 0x538u)
#define SPIM_TXD_PTR CM_REG(SPIM2_BASE + 0x544u)
#define SPIM_TXD_MAXCNT CM_REG(SPIM2_BASE + 0x548u)
#define SPIM_INTENSET CM_REG(SPIM2_BASE + 0x304u)
#define SPIM_INTENCLR CM_REG(SPIM2_BASE + 0x308u)
#define SPIM_INT_END (1u << 6) /* INTEN bit of EVENTS_END */
#define SPIM2_IRQ 35u          /* SPIM2_SPIS2_SPI2: peripheral ID 0x23, the NVIC's IRQ 35 */
#define NVIC_ISER1 CM_REG(0xE000E104u)
#define NVIC_ICER1 CM_REG(0xE000E184u)
#define SPIM2_NVIC_BIT (1u << (SPIM2_IRQ - 32u))
#define SPIM_CONFIG CM_REG(SPIM2_BASE + 0x554u)
#define SPIM_ORC CM_REG(SPIM2_BASE + 0x5C0u)
#define SPIM_K250 0x04000000u
#define SPIM_M4 0x40000000u
#define SD_SCK_PIN 15u /* all on port 1 */
#define SD_MOSI_PIN 13u
#define SD_MISO_PIN 14u
#define SD_CS_PIN 12u

#define NVMC_BASE 0x4001E000u
#define NVMC_READY CM_REG(NVMC_BASE + 0x400u)
#define NVMC_CONFIG CM_REG(NVMC_BASE + 0x504u) /* 0 read, 1 write, 2 erase */
#define NVMC_ERASEPAGE CM_REG(NVMC_BASE + 0x508u)

#define RAM_START 0x20000000u
#define RAM_END 0x20040000u

/* ---- UARTE ----------------------------------------------------------------------------------------------- */
static uint8_t rx_byte;
static uint8_t tx_bounce[64]; /* EasyDMA reads RAM only: constants in flash go through here */

static void uart_init(void) {
    GPIO_OUTSET(P0_BASE) = (1u << UART_TX_PIN) | (1u << UART_RTS_PIN);
    GPIO_PIN_CNF(P0_BASE, UART_TX_PIN) = PIN_OUTPUT;
    GPIO_PIN_CNF(P0_BASE, UART_RTS_PIN) = PIN_OUTPUT;
    GPIO_PIN_CNF(P0_BASE, UART_RX_PIN) = PIN_INPUT;
    GPIO_PIN_CNF(P0_BASE, UART_CTS_PIN) = PIN_INPUT;
    UARTE_PSEL_TXD = PSEL(0u, UART_TX_PIN);
    UARTE_PSEL_RXD = PSEL(0u, UART_RX_PIN);
    UARTE_PSEL_RTS = PSEL(0u, UART_RTS_PIN);
    UARTE_PSEL_CTS = PSEL(0u, UART_CTS_PIN);
    UARTE_BAUDRATE = POET_UART_BAUD_REG;
    UARTE_CONFIG = 1u; /* hardware flow control: the UARTE holds RTS while no receive buffer is armed */
    UARTE_ENABLE = 8u;
    UARTE_RXD_PTR = (uint32_t)(uintptr_t)&rx_byte;
    UARTE_RXD_MAXCNT = 1u;
    UARTE_EVENTS_ENDRX = 0;
    UARTE_TASKS_STARTRX = 1u;
}

/* ---- step marker ---------------------------------------------------------------------------------------- */
#define MARKER_PIN 10u /* P1.10 */
static uint8_t marker_on;

static void marker_init(void) {
    GPIO_OUTCLR(P1_BASE) = 1u << MARKER_PIN;
    GPIO_PIN_CNF(P1_BASE, MARKER_PIN) = PIN_OUTPUT;
}

static void marker_off(void) {
    if (marker_on) {
        GPIO_OUTCLR(P1_BASE) = 1u << MARKER_PIN;
        marker_on = 0;
    }
}

int poet_port_getc(void) {
    marker_off();
    while (!UARTE_EVENTS_ENDRX) {
    }
    UARTE_EVENTS_ENDRX = 0;
    int c = rx_byte;
    UARTE_TASKS_STARTRX = 1u; /* re-arm: bytes that arrived meanwhile wait in the UARTE's FIFO */
    return c;
}

static void uart_send_ram(const uint8_t *buf, uint32_t n) {
    UARTE_TXD_PTR = (uint32_t)(uintptr_t)buf;
    UARTE_TXD_MAXCNT = n;
    UARTE_EVENTS_ENDTX = 0;
    UARTE_TASKS_STARTTX = 1u;
    while (!UARTE_EVENTS_ENDTX) {
    }
}

static int in_ram(const void *p, size_t n) {
    uintptr_t a = (uintptr_t)p;
    return a >= RAM_START && a + n <= RAM_END;
}

void poet_port_write(const uint8_t *buf, size_t n) {
    marker_off(); /* a RUN's reply (or a gradient event) */
    while (n) {
        size_t k;
        if (in_ram(buf, n)) {
            k = n > 0xFFFFu ? 0xFFFFu : n;
            uart_send_ram(buf, (uint32_t)k);
        } else {
            k = n > sizeof tx_bounce ? sizeof tx_bounce : n;
            for (size_t i = 0; i < k; i++) tx_bounce[i] = buf[i];
            uart_send_ram(tx_bounce, (uint32_t)k);
        }
        buf += k;
        n -= k;
    }
}

void poet_port_flush(void) {}

/* ---- cycles ---------------------------------------------------------------------------------------------- */
static volatile uint32_t cyc_high, cyc_last;

static uint64_t cycles(void) {
    cm_irq_disable();
    uint32_t now = CM_DWT_CYCCNT;
    if (now < cyc_last) cyc_high++;
    cyc_last = now;
    uint64_t v = ((uint64_t)cyc_high << 32) | now;
    cm_irq_enable();
    return v;
}

void cm_systick_hook(void) { (void)cycles(); } /* a sample every 2^24 cycles: no 2^32 wrap goes unseen */

uint64_t poet_port_ticks(void) { /* read only by poet_run: the first read starts the marker */
    if (!marker_on) {
        GPIO_OUTSET(P1_BASE) = 1u << MARKER_PIN;
        marker_on = 1;
    }
    return cycles();
}

uint32_t poet_port_tick_hz(void) { return CORE_HZ; }

#if defined(POET_PAGER_FLASH) && POET_PAGER_FLASH
const char *poet_port_name(void) { return "nrf52840+flash-pager"; } /* the harness checks the flash's wear */
#else
const char *poet_port_name(void) { return "nrf52840"; }
#endif

/* ---- pager: SD card over SPIM2 ------------------------------------------------------------------------- */
#if !(defined(POET_PAGER_FLASH) && POET_PAGER_FLASH)
static uint8_t spi_one[2];

/* One SPIM2 EasyDMA transaction (docs/overlap.md, "The nRF52840's SD pager"):
 *   TXD.PTR (+0x544) = tx, TXD.MAXCNT (+0x548) = ntx   bytes sent; after them ORC (+0x5C0, 0xFF) is clocked out
 *   RXD.PTR (+0x534) = rx, RXD.MAXCNT (+0x538) = nrx   bytes received (MAXCNT 0: none kept)
 *   EVENTS_END (+0x118) = 0, then TASKS_START (+0x010) = 1: the SPIM clocks max(ntx, nrx) bytes on its own,
 *   reading tx and writing rx in RAM by EasyDMA (both must be in RAM: flash is not reachable by EasyDMA),
 *   and sets EVENTS_END when both buffers are done. The core is free meanwhile. */
static void spim_dma_start(const uint8_t *tx, uint32_t ntx, uint8_t *rx, uint32_t nrx) {
    SPIM_TXD_PTR = (uint32_t)(uintptr_t)tx;
    SPIM_TXD_MAXCNT = ntx;
    SPIM_RXD_PTR = (uint32_t)(uintptr_t)rx;
    SPIM_RXD_MAXCNT = nrx;
    SPIM_EVENTS_END = 0;
    SPIM_TASKS_START = 1u;
}

static int spim_dma_done(void) { return SPIM_EVENTS_END != 0; }

static void spim_run(const uint8_t *tx, uint32_t ntx, uint8_t *rx, uint32_t nrx) {
    spim_dma_start(tx, ntx, rx, nrx);
    while (!spim_dma_done()) {
    }
}

static uint8_t spi_xfer(uint8_t out) {
    spi_one[0] = out;
    spim_run(&spi_one[0], 1, &spi_one[1], 1);
    return spi_one[1];
}

static void spi_write(const uint8_t *buf, size_t n) {
    if (!in_ram(buf, n)) {
        for (size_t i = 0; i < n; i++) spi_xfer(buf[i]);
        return;
    }
    while (n) {
        uint32_t k = n > 0xFFFFu ? 0xFFFFu : (uint32_t)n;
        spim_run(buf, k, 0, 0);
        buf += k;
        n -= k;
    }
}

static void spi_read(uint8_t *buf, size_t n) {
    while (n) { /* ORC (0xFF) is clocked out while nothing is sent */
        uint32_t k = n > 0xFFFFu ? 0xFFFFu : (uint32_t)n;
        spim_run(0, 0, buf, k);
        buf += k;
        n -= k;
    }
}

static void spi_select(int on) {
    if (on)
        GPIO_OUTCLR(P1_BASE) = 1u << SD_CS_PIN;
    else
        GPIO_OUTSET(P1_BASE) = 1u << SD_CS_PIN;
}

static void spi_set_fast(int fast) { SPIM_FREQUENCY = fast ? SPIM_M4 : SPIM_K250; }

static const sd_spi sd_bus = {spi_xfer, spi_select, spi_set_fast, spi_write, spi_read, spim_dma_start, spim_dma_done};
static sd_card sd;

static void spi_init(void) {
    GPIO_OUTSET(P1_BASE) = 1u << SD_CS_PIN;
    GPIO_OUTCLR(P1_BASE) = 1u << SD_SCK_PIN;
    GPIO_PIN_CNF(P1_BASE, SD_CS_PIN) = PIN_OUTPUT;
    GPIO_PIN_CNF(P1_BASE, SD_SCK_PIN) = PIN_OUTPUT;
    GPIO_PIN_CNF(P1_BASE, SD_MOSI_PIN) = PIN_OUTPUT;
    GPIO_PIN_CNF(P1_BASE, SD_MISO_PIN) = PIN_INPUT;
    SPIM_PSEL_SCK = PSEL(1u, SD_SCK_PIN);
    SPIM_PSEL_MOSI = PSEL(1u, SD_MOSI_PIN);
    SPIM_PSEL_MISO = PSEL(1u, SD_MISO_PIN);
    SPIM_CONFIG = 0; /* mode 0, MSB first */
    SPIM_ORC = 0xFFu;
    SPIM_FREQUENCY = SPIM_K250;
    SPIM_ENABLE = 7u;
}

static poet_status pager_ready(void) {
    if (sd.ready) return POET_OK;
    return sd_init(&sd, &sd_bus, POET_SD_FIRST_BLOCK); /* on first use: no card is needed without paging */
}

uint32_t poet_port_pager_bytes(void) { return POET_PAGER_BYTES; }

poet_status poet_port_pager_write(uint32_t addr, const void *buf, uint32_t n) {
    if ((uint64_t)addr + n > POET_PAGER_BYTES) return POET_ERR_PAGER_IO;
    poet_status s = pager_ready();
    return s == POET_OK ? sd_pager_write(&sd, addr, buf, n) : s;
}

poet_status poet_port_pager_read(uint32_t addr, void *buf, uint32_t n) {
    if ((uint64_t)addr + n > POET_PAGER_BYTES) return POET_ERR_PAGER_IO;
    poet_status s = pager_ready();
    return s == POET_OK ? sd_pager_read(&sd, addr, buf, n) : s;
}

/* Programs' transfers run in the background, chained by SPIM2's END interrupt (docs/overlap.md):
 * poet_port_pager_start issues the first command, leaves a DMA running (a data block, or a short read of the
 * token or busy bytes: sd.irq) and enables the interrupt (INTENSET bit 6, NVIC IRQ 35); every EVENTS_END then
 * runs the next step in the handler, so the blocks move while kernels run. The handler disables the interrupt
 * when the transfer is done (the synchronous calls' byte exchanges also end in EVENTS_END, and the interrupt is
 * level-triggered). The runtime's polls run the same state machine with IRQ 35 masked in the NVIC, so the two
 * never interleave. */
static void spim2_irq(void) {
    if (!sd_async_irq(&sd)) SPIM_INTENCLR = SPIM_INT_END;
}

__attribute__((section(".vectors.irq"), used)) void (*const nrf52840_irq_vectors[SPIM2_IRQ + 1])(void) = {
    [SPIM2_IRQ] = spim2_irq,
};

poet_status poet_port_pager_start(poet_xfer *x) {
    if ((uint64_t)x->addr + x->n + 4u > POET_PAGER_BYTES) return POET_ERR_PAGER_IO;
    poet_status s = pager_ready();
    if (s != POET_OK) return s;
    sd.irq = 1;
    s = sd_async_start(&sd, x);
    if (s == POET_OK && !x->done) {
        SPIM_INTENSET = SPIM_INT_END;
        NVIC_ISER1 = SPIM2_NVIC_BIT;
    }
    return s;
}

void poet_port_pager_poll(poet_xfer *x) {
    if (x->done) return;
    NVIC_ICER1 = SPIM2_NVIC_BIT; /* the handler must not run the state machine while this does */
    cm_dsb();
    cm_isb();
    sd_async_poll(&sd, x);
    if (sd.op.x == NULL) SPIM_INTENCLR = SPIM_INT_END;
    NVIC_ISER1 = SPIM2_NVIC_BIT;
}

/* ---- pager: internal flash (NVMC) ----------------------------------------------------------------------- */
#else
extern uint8_t __poet_pager_start[], __poet_pager_end[]; /* port/link.ld */

static void nvmc_wait(void) {
    while (!NVMC_READY) {
    }
}

static void nvmc_erase(uintptr_t addr) {
    NVMC_CONFIG = 2u;
    nvmc_wait();
    NVMC_ERASEPAGE = (uint32_t)addr;
    nvmc_wait();
    NVMC_CONFIG = 0;
    nvmc_wait();
}

static void nvmc_program(uintptr_t addr, uint32_t w) {
    NVMC_CONFIG = 1u;
    nvmc_wait();
    *(volatile uint32_t *)addr = w;
    nvmc_wait();
    NVMC_CONFIG = 0;
    nvmc_wait();
}

static const fp_nvm nvmc = {4096u, nvmc_erase, nvmc_program};
static flash_pager fpager;
static int fpager_ready;

static void spi_init(void) {}

static poet_status pager_ready(void) {
    if (fpager_ready) return POET_OK;
    poet_status s = fp_init(&fpager, &nvmc, (uintptr_t)__poet_pager_start,
                            (uint32_t)(__poet_pager_end - __poet_pager_start));
    fpager_ready = s == POET_OK;
    return s;
}

uint32_t poet_port_pager_bytes(void) { return pager_ready() == POET_OK ? fp_capacity(&fpager) : 0; }

poet_status poet_port_pager_write(uint32_t addr, const void *buf, uint32_t n) {
    poet_status s = pager_ready();
    return s == POET_OK ? fp_write(&fpager, addr, buf, n) : s;
}

poet_status poet_port_pager_read(uint32_t addr, void *buf, uint32_t n) {
    poet_status s = pager_ready();
    return s == POET_OK ? fp_read(&fpager, addr, buf, n) : s;
}

/* The NVMC stalls the core while it erases and programs: flash transfers are synchronous. */
poet_status poet_port_pager_start(poet_xfer *x) {
    poet_pager_now(x);
    return POET_OK;
}

void poet_port_pager_poll(poet_xfer *x) { (void)x; }
#endif

/* ---- start, diagnostics, exit -------------------------------------------------------------------------- */
void poet_port_init(void) {
    CLOCK_EVENTS_HFCLKSTARTED = 0;
    CLOCK_TASKS_HFCLKSTART = 1u; /* the crystal: accurate baud rates and SPI clocks */
    while (!CLOCK_EVENTS_HFCLKSTARTED) {
    }
    CM_DEMCR |= 1u << 24; /* TRCENA: the DWT is clocked */
    CM_DWT_CYCCNT = 0;
    CM_DWT_CTRL |= 1u; /* CYCCNTENA */
    cm_systick_start();
    uart_init();
    spi_init();
    marker_init();
}

static void uart_text(const char *s) {
    size_t n = 0;
    while (s[n]) n++;
    poet_port_write((const uint8_t *)s, n);
}

void cm_port_log(const char *msg) { uart_text(msg); } /* outside frames: the harness skips it */

void cm_port_fault_exit(void) {
    for (;;) __asm__ volatile("wfi"); /* park: a debugger can still attach; the harness reports a timeout */
}

void poet_port_exit(int code) {
    (void)code;
    CM_SCB_AIRCR = 0x05FA0004u; /* SYSRESETREQ: start afresh for the next session */
    for (;;) {
    }
}
