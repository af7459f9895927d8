/* Arduino MKR1000, bare metal: SAMD21G18A, Cortex-M0+ at 48 MHz, 32 KB RAM, 256 KB flash (the first 8 KB
 * hold Arduino's SAM-BA bootloader, which PlatformIO's upload uses).
 *
 *   clock    DFLL48M in closed loop on the 32.768 kHz crystal (XOSC32K -> GCLK1 -> DFLL), GCLK0 = 48 MHz,
 *            one flash wait state
 *   link     SERCOM5 UART on the MKR header's Serial1 pins: TX D14 = PB22 (PAD2), RX D13 = PB23 (PAD3),
 *            115200 baud, 8N1 (connect a 3.3 V USB-serial adapter; the native USB port is not used)
 *   ticks    SysTick at the core clock, 24-bit wraps counted (cortexm/systick.c): cycles at 48 MHz
 *   pager    SD card over SERCOM1 SPI on the MKR header (MOSI D8 = PA16 PAD0, SCK D9 = PA17 PAD1,
 *            MISO D10 = PA19 PAD3), CS D4 = PB10 (the MKR SD Proto / MEM shields), raw 512-byte blocks
 *   marker   D5 = PB11 is high from a RUN's first tick reading until its reply starts: wired to a Power
 *            Profiler Kit II's logic input D0 it frames each step in the current trace (--meter)
 *   exit     the core resets
 * Register addresses: SAM D21 family datasheet (DS40001882). */
#include "../cortexm/cm.h"
#include "../cortexm/sdcard.h"
#include "poet/port.h"

#define CORE_HZ 48000000u
#define UART_BAUD 115200u
#ifndef POET_SD_FIRST_BLOCK
#define POET_SD_FIRST_BLOCK 8192u
#endif
#ifndef POET_PAGER_BYTES
#define POET_PAGER_BYTES 0x80000000u
#endif

#define REG16(a) (*(volatile uint16_t *)(a))
#define REG8(a) (*(volatile uint8_t *)(a))

#define PM_BASE 0x40000400u
#define PM_APBCMASK CM_REG(PM_BASE + 0x20u)
#define SYSCTRL_BASE 0x40000800u
#define SYSCTRL_PCLKSR CM_REG(SYSCTRL_BASE + 0x0Cu)
#define SYSCTRL_XOSC32K REG16(SYSCTRL_BASE + 0x14u)
#define SYSCTRL_DFLLCTRL REG16(SYSCTRL_BASE + 0x24u)
#define SYSCTRL_DFLLMUL CM_REG(SYSCTRL_BASE + 0x2Cu)
#define PCLKSR_XOSC32KRDY (1u << 1)
#define PCLKSR_DFLLRDY (1u << 4)
#define PCLKSR_DFLLLCKF (1u << 6)
#define PCLKSR_DFLLLCKC (1u << 7)
#define GCLK_BASE 0x40000C00u
#define GCLK_STATUS REG8(GCLK_BASE + 0x01u)
#define GCLK_CLKCTRL REG16(GCLK_BASE + 0x02u)
#define GCLK_GENCTRL CM_REG(GCLK_BASE + 0x04u)
#define GCLK_GENDIV CM_REG(GCLK_BASE + 0x08u)
#define GCLK_SYNCBUSY 0x80u
#define GCLK_SRC_XOSC32K 0x05u
#define GCLK_SRC_DFLL48M 0x07u
#define GCLK_ID_DFLL48 0x00u
#define GCLK_ID_SERCOM1_CORE 0x15u
#define GCLK_ID_SERCOM5_CORE 0x19u
#define NVMCTRL_CTRLB CM_REG(0x41004000u + 0x04u)

#define PORT_BASE 0x41004400u
#define PORT_GROUP(g) (PORT_BASE + 0x80u * (g))
#define PORT_DIRSET(g) CM_REG(PORT_GROUP(g) + 0x08u)
#define PORT_OUTCLR(g) CM_REG(PORT_GROUP(g) + 0x14u)
#define PORT_OUTSET(g) CM_REG(PORT_GROUP(g) + 0x18u)
#define PORT_PMUX(g, pin) REG8(PORT_GROUP(g) + 0x30u + (pin) / 2u)
#define PORT_PINCFG(g, pin) REG8(PORT_GROUP(g) + 0x40u + (pin))
#define PINCFG_PMUXEN 0x01u
#define PINCFG_INEN 0x02u
#define PORT_A 0u
#define PORT_B 1u
#define MUX_C 2u
#define MUX_D 3u

#define SERCOM1_BASE 0x42000C00u
#define SERCOM5_BASE 0x42001C00u
#define SERCOM_CTRLA(b) CM_REG((b) + 0x00u)
#define SERCOM_CTRLB(b) CM_REG((b) + 0x04u)
#define SERCOM_BAUD16(b) REG16((b) + 0x0Cu)
#define SERCOM_BAUD8(b) REG8((b) + 0x0Cu)
#define SERCOM_INTFLAG(b) REG8((b) + 0x18u)
#define SERCOM_SYNCBUSY(b) CM_REG((b) + 0x1Cu)
#define SERCOM_DATA(b) REG16((b) + 0x28u)
#define INTFLAG_DRE 0x01u
#define INTFLAG_RXC 0x04u
#define CTRLA_ENABLE (1u << 1)
#define APBC_SERCOM1 (1u << 3)
#define APBC_SERCOM5 (1u << 7)

#define SD_CS_PIN 10u /* PB10 */

static void gclk_sync(void) {
    while (GCLK_STATUS & GCLK_SYNCBUSY) {
    }
}

static void clock_init(void) {
    NVMCTRL_CTRLB = (NVMCTRL_CTRLB & ~(0xFu << 1)) | (1u << 1); /* 1 wait state: 48 MHz at 3.3 V */
    SYSCTRL_XOSC32K = (uint16_t)((6u << 8) | (1u << 3) | (1u << 2)); /* STARTUP 6, EN32K, XTALEN */
    SYSCTRL_XOSC32K |= 1u << 1;                                       /* ENABLE */
    while (!(SYSCTRL_PCLKSR & PCLKSR_XOSC32KRDY)) {
    }
    GCLK_GENDIV = 1u; /* generator 1, no division */
    gclk_sync();
    GCLK_GENCTRL = 1u | (GCLK_SRC_XOSC32K << 8) | (1u << 16); /* generator 1 = XOSC32K, enabled */
    gclk_sync();
    GCLK_CLKCTRL = (uint16_t)(GCLK_ID_DFLL48 | (1u << 8) | (1u << 14)); /* DFLL reference = generator 1 */
    gclk_sync();
    SYSCTRL_DFLLCTRL = 0; /* errata: clear ONDEMAND before configuring */
    while (!(SYSCTRL_PCLKSR & PCLKSR_DFLLRDY)) {
    }
    SYSCTRL_DFLLMUL = (31u << 26) | (511u << 16) | (CORE_HZ / 32768u); /* CSTEP, FSTEP, MUL = 1464 */
    while (!(SYSCTRL_PCLKSR & PCLKSR_DFLLRDY)) {
    }
    SYSCTRL_DFLLCTRL = (uint16_t)((1u << 2) | (1u << 9) | (1u << 11)); /* closed loop, QLDIS, WAITLOCK */
    while (!(SYSCTRL_PCLKSR & PCLKSR_DFLLRDY)) {
    }
    SYSCTRL_DFLLCTRL |= 1u << 1; /* ENABLE */
    while ((SYSCTRL_PCLKSR & (PCLKSR_DFLLLCKC | PCLKSR_DFLLLCKF)) != (PCLKSR_DFLLLCKC | PCLKSR_DFLLLCKF)) {
    }
    GCLK_GENCTRL = 0u | (GCLK_SRC_DFLL48M << 8) | (1u << 16) | (1u << 17); /* generator 0 = DFLL, IDC */
    gclk_sync();
}

static void pin_mux(uint32_t group, uint32_t pin, uint32_t fn, int input) {
    uint8_t pm = PORT_PMUX(group, pin);
    pm = (pin & 1u) ? (uint8_t)((pm & 0x0Fu) | (fn << 4)) : (uint8_t)((pm & 0xF0u) | fn);
    PORT_PMUX(group, pin) = pm;
    PORT_PINCFG(group, pin) = (uint8_t)(PINCFG_PMUXEN | (input ? PINCFG_INEN : 0u));
}

static void sercom_clock(uint32_t apbc, uint32_t gclk_id) {
    PM_APBCMASK |= apbc;
    GCLK_CLKCTRL = (uint16_t)(gclk_id | (0u << 8) | (1u << 14)); /* generator 0 (48 MHz) */
    gclk_sync();
}

/* ---- SERCOM5 UART ---------------------------------------------------------------------------------------- */
static void uart_init(void) {
    sercom_clock(APBC_SERCOM5, GCLK_ID_SERCOM5_CORE);
    pin_mux(PORT_B, 22u, MUX_D, 0);
    pin_mux(PORT_B, 23u, MUX_D, 1);
    SERCOM_CTRLA(SERCOM5_BASE) = 1u; /* SWRST */
    while (SERCOM_SYNCBUSY(SERCOM5_BASE) & 1u) {
    }
    /* async UART, internal clock (MODE 1), 16x sampling, RX on PAD3 (RXPO 3), TX on PAD2 (TXPO 1), LSB first */
    SERCOM_CTRLA(SERCOM5_BASE) = (1u << 2) | (3u << 20) | (1u << 16) | (1u << 30);
    /* BAUD = 65536 * (1 - 16 * f_baud / f_ref) */
    SERCOM_BAUD16(SERCOM5_BASE) = (uint16_t)(65536u - (uint32_t)((65536ull * 16u * UART_BAUD) / CORE_HZ));
    SERCOM_CTRLB(SERCOM5_BASE) = (1u << 16) | (1u << 17); /* TXEN, RXEN, 8 bits */
    while (SERCOM_SYNCBUSY(SERCOM5_BASE) & 4u) {
    }
    SERCOM_CTRLA(SERCOM5_BASE) |= CTRLA_ENABLE;
    while (SERCOM_SYNCBUSY(SERCOM5_BASE) & 2u) {
    }
}

/* ---- step marker ---------------------------------------------------------------------------------------- */
#define MARKER_PIN 11u /* PB11 = D5 */
static uint8_t marker_on;

static void marker_init(void) {
    PORT_OUTCLR(PORT_B) = 1u << MARKER_PIN;
    PORT_DIRSET(PORT_B) = 1u << MARKER_PIN;
}

static void marker_off(void) {
    if (marker_on) {
        PORT_OUTCLR(PORT_B) = 1u << MARKER_PIN;
        marker_on = 0;
    }
}

int poet_port_getc(void) {
    marker_off();
    while (!(SERCOM_INTFLAG(SERCOM5_BASE) & INTFLAG_RXC)) {
    }
    return (int)(SERCOM_DATA(SERCOM5_BASE) & 0xFFu);
}

void poet_port_write(const uint8_t *buf, size_t n) {
    marker_off(); /* a RUN's reply (or a gradient event) */
    for (size_t i = 0; i < n; i++) {
        while (!(SERCOM_INTFLAG(SERCOM5_BASE) & INTFLAG_DRE)) {
        }
        SERCOM_DATA(SERCOM5_BASE) = buf[i];
    }
}

void poet_port_flush(void) {
    while (!(SERCOM_INTFLAG(SERCOM5_BASE) & 0x02u)) { /* TXC: the last byte has left */
        if (!(SERCOM_CTRLB(SERCOM5_BASE) & (1u << 16))) break;
    }
}

/* ---- SERCOM1 SPI and the SD card ------------------------------------------------------------------------ */
static void spi_set_fast(int fast) {
    SERCOM_CTRLA(SERCOM1_BASE) &= ~CTRLA_ENABLE;
    while (SERCOM_SYNCBUSY(SERCOM1_BASE) & 2u) {
    }
    /* f_sck = f_ref / (2 * (BAUD + 1)): 59 -> 400 kHz, 5 -> 4 MHz */
    SERCOM_BAUD8(SERCOM1_BASE) = fast ? 5u : 59u;
    SERCOM_CTRLA(SERCOM1_BASE) |= CTRLA_ENABLE;
    while (SERCOM_SYNCBUSY(SERCOM1_BASE) & 2u) {
    }
}

static uint8_t spi_xfer(uint8_t out) {
    while (!(SERCOM_INTFLAG(SERCOM1_BASE) & INTFLAG_DRE)) {
    }
    SERCOM_DATA(SERCOM1_BASE) = out;
    while (!(SERCOM_INTFLAG(SERCOM1_BASE) & INTFLAG_RXC)) {
    }
    return (uint8_t)SERCOM_DATA(SERCOM1_BASE);
}

static void spi_select(int on) {
    if (on)
        PORT_OUTCLR(PORT_B) = 1u << SD_CS_PIN;
    else
        PORT_OUTSET(PORT_B) = 1u << SD_CS_PIN;
}

static const sd_spi sd_bus = {spi_xfer, spi_select, spi_set_fast, 0, 0, 0, 0}; /* no DMA: synchronous paging */
static sd_card sd;

static void spi_init(void) {
    sercom_clock(APBC_SERCOM1, GCLK_ID_SERCOM1_CORE);
    PORT_OUTSET(PORT_B) = 1u << SD_CS_PIN;
    PORT_DIRSET(PORT_B) = 1u << SD_CS_PIN;
    pin_mux(PORT_A, 16u, MUX_C, 0);
    pin_mux(PORT_A, 17u, MUX_C, 0);
    pin_mux(PORT_A, 19u, MUX_C, 1);
    SERCOM_CTRLA(SERCOM1_BASE) = 1u; /* SWRST */
    while (SERCOM_SYNCBUSY(SERCOM1_BASE) & 1u) {
    }
    /* SPI master (MODE 3), DOPO 0 (MOSI PAD0, SCK PAD1), DIPO 3 (MISO PAD3), mode 0, MSB first */
    SERCOM_CTRLA(SERCOM1_BASE) = (3u << 2) | (0u << 16) | (3u << 20);
    SERCOM_CTRLB(SERCOM1_BASE) = 1u << 17; /* RXEN, 8 bits */
    while (SERCOM_SYNCBUSY(SERCOM1_BASE) & 4u) {
    }
    spi_set_fast(0);
}

static poet_status pager_ready(void) {
    if (sd.ready) return POET_OK;
    return sd_init(&sd, &sd_bus, POET_SD_FIRST_BLOCK);
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

/* SERCOM1 SPI is driven byte by byte by the core (no DMA in this port): transfers are synchronous behind the
 * asynchronous interface (boards/mkr1000.toml: pager_overlap false). */
poet_status poet_port_pager_start(poet_xfer *x) {
    if ((uint64_t)x->addr + x->n + 4u > POET_PAGER_BYTES) return POET_ERR_PAGER_IO;
    poet_pager_now(x);
    return POET_OK;
}

void poet_port_pager_poll(poet_xfer *x) { (void)x; }

/* ---- start, ticks, diagnostics, exit ------------------------------------------------------------------- */
void poet_port_init(void) {
    clock_init();
    cm_systick_start();
    uart_init();
    spi_init();
    marker_init();
}

uint64_t poet_port_ticks(void) { /* read only by poet_run: the first read starts the marker */
    if (!marker_on) {
        PORT_OUTSET(PORT_B) = 1u << MARKER_PIN;
        marker_on = 1;
    }
    return cm_systick_count();
}

uint32_t poet_port_tick_hz(void) { return CORE_HZ; }

const char *poet_port_name(void) { return "mkr1000"; }

void cm_port_log(const char *msg) {
    size_t n = 0;
    while (msg[n]) n++;
    poet_port_write((const uint8_t *)msg, n);
    poet_port_flush();
}

void cm_port_fault_exit(void) {
    for (;;) __asm__ volatile("wfi");
}

void poet_port_exit(int code) {
    (void)code;
    poet_port_flush();
    CM_SCB_AIRCR = 0x05FA0004u; /* SYSRESETREQ */
    for (;;) {
    }
}
