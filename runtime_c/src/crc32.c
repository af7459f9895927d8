/* CRC-32 (IEEE 802.3, reflected, polynomial 0xEDB88320), bitwise: small code, no table in RAM or flash.
 * Same value as zlib.crc32 / binascii.crc32. */
#include "poet/poet.h"

uint32_t poet_crc32(uint32_t crc, const void *data, size_t n) {
    const uint8_t *p = (const uint8_t *)data;
    crc = ~crc;
    for (size_t i = 0; i < n; i++) {
        crc ^= p[i];
        for (int b = 0; b < 8; b++) crc = (crc >> 1) ^ (0xEDB88320u & (0u - (crc & 1u)));
    }
    return ~crc;
}
