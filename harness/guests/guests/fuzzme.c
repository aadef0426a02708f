/*
 * fuzzme: a small packet driver with three planted bugs, the demonstration
 * target for `lunavm fuzz` (snapshot fuzzing of guest code). guests.txt
 * builds it twice: `fuzzme` plain, and `fuzzme_cov` with this file (only)
 * compiled with -fsanitize-coverage=trace-pc,trace-cmp and runtime/sancov.c
 * linked in (see runtime/sancov.h).
 *
 * Packet format (all fields little-endian):
 *
 *   offset size field
 *   0      4    magic     0x414e554c, the bytes "LUNA"
 *   4      1    type      1 = SET, 2 = CTRL, anything else is ignored
 *   5      1    flags     ignored
 *   6      2    len       payload length
 *   8      4    csum      FNV-1a (32-bit) of the payload; checked by CTRL only
 *   12     len  payload
 *
 *   SET  payload: u32 index, u64 value: regs[index] = value (index 0..7)
 *   CTRL payload: u16 op, ...: 0x4750 ("PG") ping; 0x5352 ("RS") reset
 *                 the machine
 *
 * A packet shorter than 12 bytes, with another magic, of an unknown type or
 * failing a check is rejected: the guest prints why and finishes normally.
 *
 * The bugs, from shallow to deep:
 *
 *   1. A payload length beyond the received bytes is treated as impossible
 *      and calls fuzzme_panic() (a BUG_ON reachable from the device): prints
 *      "fuzzme panic: payload length beyond the packet" and exits with
 *      status 0x66 (LUNAVM_EXIT_PANIC). Needs only the magic:
 *        4c554e41 01 00 ffff 00000000
 *   2. SET checks `index > NREGS` instead of `>=`: index 8 stores the value
 *      over dev.stats, the pointer to the statistics the driver bumps next.
 *      A non-canonical value raises #GP (runtime: "lunavm: unexpected
 *      exception 13 (#GP) ...", status 0x7d); a canonical one above 4 GiB
 *      raises #PF (status 0x7e); one below 4 GiB is a silent wild write:
 *        4c554e41 01 00 0c00 00000000 08000000 4141414141414141
 *   3. CTRL op "RS" honours a reset request from the device by loading an
 *      empty IDT and executing ud2: a triple fault (lunavm: "shutdown").
 *      Guarded by the checksum:
 *        4c554e41 02 00 0200 12e6046e 5253
 *
 * Where the packet comes from (command line `src=`):
 *
 *   src=port (default)  the packet device, ports 0x5f0-0x5f7 (none is built
 *                       into lunavm: a scenario or the fuzzer provides it):
 *                         0x5f0 write u32: guest-physical address of the
 *                               receive buffer
 *                         0x5f4 write u32: its capacity
 *                         0x5f4 read u32:  the device copies one packet of at
 *                               most the capacity into the buffer and returns
 *                               its length (0: none; all-ones, the value of
 *                               an unclaimed port, means no device)
 *   src=buffer          the generic symbol convention: the guest calls
 *                       lunavm_fuzz_point() (noinline, a breakpoint target),
 *                       then parses lunavm_fuzz_input[0..lunavm_fuzz_input_len)
 *                       (the length is clamped to the 4096-byte buffer).
 *
 * In both modes the guest sends ucall FUZZ_POINT(buffer, capacity) right
 * before it obtains the packet; fuzzme_cov first sends COV_MAP once and
 * clears its map just before FUZZ_POINT. After the packet the guest sends
 * DONE(0) and exits 0. `quiet=1` leaves out the lines about the packet
 * (fewer exits per fuzz iteration); panics and exceptions still print.
 * A bad `src=` value exits with 0x5f.
 */
#include "lunavm.h"
#ifdef LUNAVM_SANCOV
#include "sancov.h"
#endif

#define FUZZME_MAGIC 0x414e554cu /* "LUNA" */
#define FUZZME_HDR 12
#define TYPE_SET 1
#define TYPE_CTRL 2
#define NREGS 8
#define CTRL_PING 0x4750 /* "PG" */
#define CTRL_RESET 0x5352 /* "RS" */

#define PKT_PORT 0x5f0
#define PKT_REG_ADDR (PKT_PORT + 0)
#define PKT_REG_LEN (PKT_PORT + 4)

#define FUZZ_INPUT_SIZE 4096
#define RX_SIZE 1024

/* The generic fuzz-input convention (src=buffer). */
uint8_t lunavm_fuzz_input[FUZZ_INPUT_SIZE];
volatile uint32_t lunavm_fuzz_input_len;

/* The packet device's receive buffer (src=port). */
static uint8_t rx_buf[RX_SIZE] __attribute__((aligned(64)));

struct counters {
	uint64_t packets, sets, ctrls;
};
static struct counters counters;

/* The device state: registers, then the pointer bug 2 overwrites. */
static struct {
	volatile uint64_t regs[NREGS];
	struct counters *volatile stats;
} dev = { .stats = &counters };

static int quiet;

#define say(...)                             \
	do {                                 \
		if (!quiet)                  \
			printf(__VA_ARGS__); \
	} while (0)

__attribute__((noinline, noreturn)) void fuzzme_panic(const char *msg);
__attribute__((noinline, noreturn)) void fuzzme_panic(const char *msg)
{
	printf("fuzzme panic: %s\n", msg);
	guest_exit(LUNAVM_EXIT_PANIC);
}

/* The fuzz point of the symbol convention: a breakpoint target. */
__attribute__((noipa)) void lunavm_fuzz_point(void);
__attribute__((noipa)) void lunavm_fuzz_point(void)
{
	__asm__ volatile("" : : : "memory");
}

static uint16_t get_le16(const uint8_t *p)
{
	return (uint16_t)(p[0] | p[1] << 8);
}

static uint32_t get_le32(const uint8_t *p)
{
	return (uint32_t)p[0] | (uint32_t)p[1] << 8 | (uint32_t)p[2] << 16 |
	       (uint32_t)p[3] << 24;
}

static uint64_t get_le64(const uint8_t *p)
{
	return (uint64_t)get_le32(p) | (uint64_t)get_le32(p + 4) << 32;
}

static uint32_t fnv1a(const uint8_t *p, uint32_t n)
{
	uint32_t h = 0x811c9dc5u;

	for (uint32_t i = 0; i < n; i++) {
		h ^= p[i];
		h *= 0x01000193u;
	}
	return h;
}

static int reject(const char *why)
{
	say("fuzzme: rejected: %s\n", why);
	return -1;
}

static int cmd_set(const uint8_t *p, uint32_t len)
{
	if (len < 12)
		return reject("short SET");
	uint32_t index = get_le32(p);
	uint64_t value = get_le64(p + 4);

	/* Bug 2: should be >=; index NREGS lands on dev.stats. */
	if (index > NREGS)
		return reject("register out of range");
	dev.regs[index] = value;
	dev.stats->sets++;
	say("fuzzme: reg %u = 0x%llx\n", (unsigned)index, (unsigned long long)value);
	return 0;
}

static void reset_machine(void)
{
	/* Bug 3: the device may ask for a reset, and gets a triple fault. */
	say("fuzzme: reset requested\n");
	lidt(0, 0);
	__asm__ volatile("ud2" : : : "memory");
}

static int cmd_ctrl(const uint8_t *p, uint32_t len, uint32_t csum)
{
	if (len < 2)
		return reject("short CTRL");
	if (fnv1a(p, len) != csum)
		return reject("bad checksum");
	dev.stats->ctrls++;
	switch (get_le16(p)) {
	case CTRL_PING:
		say("fuzzme: ping\n");
		return 0;
	case CTRL_RESET:
		reset_machine();
		return reject("still running after the reset");
	default:
		return reject("unknown CTRL op");
	}
}

/* Parses one packet of n bytes; 0 when accepted, -1 when rejected. */
__attribute__((noinline)) int parse(const uint8_t *pkt, uint32_t n);
__attribute__((noinline)) int parse(const uint8_t *pkt, uint32_t n)
{
	if (n < FUZZME_HDR)
		return reject("short packet");
	if (get_le32(pkt) != FUZZME_MAGIC)
		return reject("bad magic");

	uint8_t type = pkt[4];
	uint32_t len = get_le16(pkt + 6);
	uint32_t csum = get_le32(pkt + 8);
	const uint8_t *payload = pkt + FUZZME_HDR;

	/* Bug 1: a length the device got wrong brings the whole guest down. */
	if (len > n - FUZZME_HDR)
		fuzzme_panic("payload length beyond the packet");
	dev.stats->packets++;

	switch (type) {
	case TYPE_SET:
		return cmd_set(payload, len);
	case TYPE_CTRL:
		return cmd_ctrl(payload, len, csum);
	default:
		return reject("unknown type");
	}
}

static void fuzz_point(void *buf, uint32_t capacity)
{
#ifdef LUNAVM_SANCOV
	sancov_reset();
#endif
	ucall_fuzz_point(buf, capacity);
}

/* src=port: one packet from the packet device into rx_buf; its length. */
static uint32_t receive_port(void)
{
	fuzz_point(rx_buf, sizeof(rx_buf));
	outl(PKT_REG_ADDR, (uint32_t)(uintptr_t)rx_buf);
	outl(PKT_REG_LEN, sizeof(rx_buf));
	uint32_t n = inl(PKT_REG_LEN);

	if (n == 0xffffffffu) {
		say("fuzzme: no packet device at 0x%x\n", PKT_PORT);
		return 0;
	}
	if (n > sizeof(rx_buf)) {
		say("fuzzme: device returned length %u > %u\n", (unsigned)n,
		    (unsigned)sizeof(rx_buf));
		return 0;
	}
	return n;
}

/* src=buffer: the symbol convention. */
static uint32_t receive_buffer(void)
{
	fuzz_point(lunavm_fuzz_input, sizeof(lunavm_fuzz_input));
	lunavm_fuzz_point();
	uint32_t n = lunavm_fuzz_input_len;

	return n > sizeof(lunavm_fuzz_input) ? sizeof(lunavm_fuzz_input) : n;
}

int guest_main(const char *cmdline)
{
	char src[16] = "port";
	const uint8_t *pkt;
	uint32_t n;

	quiet = cmdline_get_u64(cmdline, "quiet", 0) != 0;
	cmdline_get(cmdline, "src", src, sizeof(src));
	if (strcmp(src, "port") && strcmp(src, "buffer")) {
		printf("fuzzme: bad src=%s (port or buffer)\n", src);
		return 0x5f;
	}
#ifdef LUNAVM_SANCOV
	sancov_register();
#endif
	say("fuzzme: waiting for a packet (src=%s)\n", src);
	if (src[0] == 'b') {
		n = receive_buffer();
		pkt = lunavm_fuzz_input;
	} else {
		n = receive_port();
		pkt = rx_buf;
	}
	say("fuzzme: %u bytes\n", (unsigned)n);
	if (parse(pkt, n) == 0)
		say("fuzzme: accepted\n");
	ucall_done(0);
}
