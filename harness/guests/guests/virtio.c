/*
 * virtio: small virtio-mmio drivers (runtime/virtio.c) for blk, net,
 * console and rng. Finds its devices from the virtio_mmio.device= words of
 * its own command line, as Linux does, probes each, does I/O, checks the
 * results and exits 0 when everything held (1 when a check failed).
 *
 * Per device:
 *   blk      prints capacity, get-id and the first 8 bytes of sector 0 as they
 *            were; then rounds=R (default 4) rounds of: write a 4 KiB pattern
 *            at sector 8*(round % (capacity/8)), read it back, compare; a read
 *            past the end must fail with IOERR; flush. Prints a checksum.
 *            verify=0 skips the pattern, the compare and the checksum (pure
 *            I/O, for benchmarks).
 *   net      sends frames=F (default 2) frames (broadcast, ethertype 0x88b5,
 *            payload "lunavm frame N"); netecho=E then makes E round trips
 *            (a frame out, wait for a frame back, as a benchmark does); with
 *            netwait=N then waits for N frames from the host and prints each
 *            one's length and payload text.
 *   console  writes "virtio-console: hello" to the device; with coninput=N
 *            waits for N bytes of input and prints them.
 *   rng      reads 16 bytes and prints them in hex.
 * Options: irq=1 waits for interrupts (8259 PIC, hlt) instead of polling;
 *          only=KIND probes just that kind of device; sync=1 sends a ucall
 *          SYNC (id = round) before each blk round, a point for snapshots.
 */
#include "lunavm.h"
#include "virtio.h"

static struct virtio_dev devs[VIRTIO_MAX_DEVICES];
static uint8_t buf[4096] __attribute__((aligned(4096)));
static uint8_t back[4096] __attribute__((aligned(4096)));
static uint8_t frame[1600] __attribute__((aligned(64)));
static uint8_t rx[VIRTQ_SIZE][1600] __attribute__((aligned(64)));
static int failures;

#define CHECK(cond, ...)                                              \
	do {                                                          \
		if (!(cond)) {                                        \
			printf("FAIL: " __VA_ARGS__);                 \
			failures++;                                   \
		}                                                     \
	} while (0)

struct blk_req {
	uint32_t type;
	uint32_t reserved;
	uint64_t sector;
};

static uint8_t blk_io(struct virtio_dev *d, uint32_t type, uint64_t sector, void *data,
		      uint32_t len, bool to_guest)
{
	static struct blk_req hdr;
	static volatile uint8_t status;
	hdr.type = type;
	hdr.reserved = 0;
	hdr.sector = sector;
	status = 0xff;
	struct virtio_buf bufs[3] = {
		{ &hdr, sizeof(hdr), false },
		{ data, len, to_guest },
		{ (void *)&status, 1, true },
	};
	if (len) {
		virtq_submit(d, 0, bufs, 3);
	} else {
		bufs[1] = bufs[2];
		virtq_submit(d, 0, bufs, 2);
	}
	uint32_t used;
	if (virtq_wait(d, 0, &used, 0) < 0)
		return 0xfe;
	return status;
}

static void do_blk(struct virtio_dev *d, const char *cmdline)
{
	uint64_t cap = virtio_config64(d, 0);
	char id[21];
	memset(id, 0, sizeof(id));
	CHECK(blk_io(d, 8, 0, id, 20, true) == 0, "blk get-id\n");
	CHECK(blk_io(d, 0, 0, back, 512, true) == 0, "blk read sector 0\n");
	printf("blk: capacity %llu sectors, id '%s', sector 0 starts", (unsigned long long)cap, id);
	for (int i = 0; i < 8; i++)
		printf(" %02x", back[i]);
	printf("\n");
	uint64_t rounds = cmdline_get_u64(cmdline, "rounds", 4);
	bool sync = cmdline_get_u64(cmdline, "sync", 0);
	uint32_t sum = 2166136261u;
	uint64_t slots = cap / 8;
	bool verify = cmdline_get_u64(cmdline, "verify", 1);
	for (uint64_t r = 0; r < rounds && slots; r++) {
		if (sync)
			ucall_sync(r);
		uint64_t sector = 8 * (r % slots);
		if (verify)
			for (int i = 0; i < 4096; i++)
				buf[i] = (uint8_t)(i * 7 + r * 13 + (i >> 8));
		CHECK(blk_io(d, 1, sector, buf, 4096, false) == 0, "blk write round %llu\n",
		      (unsigned long long)r);
		if (verify)
			memset(back, 0, sizeof(back));
		CHECK(blk_io(d, 0, sector, back, 4096, true) == 0, "blk read round %llu\n",
		      (unsigned long long)r);
		if (!verify)
			continue;
		CHECK(memcmp(buf, back, 4096) == 0, "blk data round %llu\n", (unsigned long long)r);
		for (int i = 0; i < 4096; i++)
			sum = (sum ^ back[i]) * 16777619u;
	}
	CHECK(blk_io(d, 0, cap, back, 512, true) == 1, "blk read past the end must be IOERR\n");
	CHECK(blk_io(d, 4, 0, NULL, 0, false) == 0, "blk flush\n");
	printf("blk: %llu rounds of 4 KiB, checksum %08x\n", (unsigned long long)rounds, sum);
}

static void do_net(struct virtio_dev *d, const char *cmdline)
{
	uint8_t mac[6];
	for (int i = 0; i < 6; i++)
		mac[i] = virtio_config8(d, (unsigned)i);
	printf("net: mac %02x:%02x:%02x:%02x:%02x:%02x, link %s\n", mac[0], mac[1], mac[2],
	       mac[3], mac[4], mac[5], (virtio_config8(d, 6) & 1) ? "up" : "down");
	uint64_t wait = cmdline_get_u64(cmdline, "netwait", 0);
	/* Receive buffers first, so frames from the host have somewhere to go. */
	for (int i = 0; i < VIRTQ_SIZE / 2; i++) {
		struct virtio_buf b = { rx[i], sizeof(rx[i]), true };
		virtq_post(d, 0, &b, 1);
	}
	virtq_notify(d, 0);
	uint64_t frames = cmdline_get_u64(cmdline, "frames", 2);
	for (uint64_t n = 0; n < frames; n++) {
		memset(frame, 0, 12);             /* virtio_net_hdr_v1 */
		memset(frame + 12, 0xff, 6);      /* destination: broadcast */
		memcpy(frame + 18, mac, 6);
		frame[24] = 0x88;
		frame[25] = 0xb5;
		int len = snprintf((char *)frame + 26, 100, "lunavm frame %llu",
				   (unsigned long long)n);
		struct virtio_buf b = { frame, (uint32_t)(26 + len), false };
		virtq_submit(d, 1, &b, 1);
		CHECK(virtq_wait(d, 1, NULL, 0) >= 0, "net tx\n");
	}
	printf("net: sent %llu frames\n", (unsigned long long)frames);
	/* Round trips: one frame out, the same frame back from the host. */
	uint64_t echo = cmdline_get_u64(cmdline, "netecho", 0);
	for (uint64_t n = 0; n < echo; n++) {
		struct virtio_buf b = { frame, 26 + 16, false };
		virtq_submit(d, 1, &b, 1);
		CHECK(virtq_wait(d, 1, NULL, 0) >= 0, "net echo tx\n");
		uint32_t len = 0;
		int id = virtq_wait(d, 0, &len, 0);
		if (id < 0 || id >= VIRTQ_SIZE) {
			CHECK(0, "net echo rx\n");
			break;
		}
		struct virtio_buf r = { rx[id], sizeof(rx[0]), true };
		virtq_submit(d, 0, &r, 1);
	}
	if (echo)
		printf("net: %llu round trips\n", (unsigned long long)echo);
	for (uint64_t n = 0; n < wait; n++) {
		uint32_t len = 0;
		int id = virtq_wait(d, 0, &len, 0);
		CHECK(id >= 0 && id < VIRTQ_SIZE, "net rx id\n");
		if (id < 0 || id >= VIRTQ_SIZE)
			break;
		uint8_t *f = rx[id];
		char text[64];
		uint32_t tlen = len > 26 ? len - 26 : 0;
		if (tlen > sizeof(text) - 1)
			tlen = sizeof(text) - 1;
		memcpy(text, f + 26, tlen);
		text[tlen] = 0;
		printf("net: received %u bytes: %s\n", len > 12 ? len - 12 : 0, text);
		struct virtio_buf b = { f, sizeof(rx[0]), true };
		virtq_submit(d, 0, &b, 1);
	}
}

static void do_console(struct virtio_dev *d, const char *cmdline)
{
	static char out[] = "virtio-console: hello\n";
	static char in[128];
	struct virtio_buf b = { out, sizeof(out) - 1, false };
	virtq_submit(d, 1, &b, 1);
	CHECK(virtq_wait(d, 1, NULL, 0) >= 0, "console tx\n");
	uint64_t want = cmdline_get_u64(cmdline, "coninput", 0);
	if (want >= sizeof(in))
		want = sizeof(in) - 1;
	uint64_t got = 0;
	while (got < want) {
		struct virtio_buf r = { in + got, (uint32_t)(want - got), true };
		virtq_submit(d, 0, &r, 1);
		uint32_t len = 0;
		if (virtq_wait(d, 0, &len, 0) < 0)
			break;
		got += len;
	}
	in[got] = 0;
	printf("console: wrote %u bytes", (unsigned)(sizeof(out) - 1));
	if (want)
		printf(", read '%s'", in);
	printf("\n");
}

static void do_rng(struct virtio_dev *d)
{
	static uint8_t r[16];
	struct virtio_buf b = { r, sizeof(r), true };
	virtq_submit(d, 0, &b, 1);
	uint32_t len = 0;
	CHECK(virtq_wait(d, 0, &len, 0) >= 0 && len == sizeof(r), "rng read\n");
	printf("rng:");
	for (unsigned i = 0; i < sizeof(r); i++)
		printf(" %02x", r[i]);
	printf("\n");
}

int guest_main(const char *cmdline)
{
	int n = virtio_find(cmdline, devs, VIRTIO_MAX_DEVICES);
	char only[16] = "";
	cmdline_get(cmdline, "only", only, sizeof(only));
	bool irq = cmdline_get_u64(cmdline, "irq", 0);
	printf("virtio: %d device(s) on the command line\n", n);
	for (int i = 0; i < n; i++) {
		struct virtio_dev *d = &devs[i];
		uint64_t wanted = (1ull << 5) /* net MAC, blk RO */ | (1ull << 16) /* net STATUS */ |
				  (1ull << 9) /* blk FLUSH */;
		int err = virtio_init(d, wanted);
		printf("virtio: slot %d at 0x%llx irq %u: %s", i, (unsigned long long)d->base,
		       d->irq, err ? "no device" : virtio_id_name(d->device_id));
		printf("\n");
		if (err) {
			CHECK(0, "init slot %d: %d\n", i, err);
			continue;
		}
		const char *kind = virtio_id_name(d->device_id);
		if (only[0] && strcmp(only, kind) != 0)
			continue;
		unsigned queues = d->device_id == VIRTIO_ID_BLOCK || d->device_id == VIRTIO_ID_RNG ? 1 : 2;
		for (unsigned q = 0; q < queues; q++)
			CHECK(virtio_queue_setup(d, q) == 0, "queue %u setup\n", q);
		if (irq)
			virtio_use_irq(d);
		virtio_driver_ok(d);
		switch (d->device_id) {
		case VIRTIO_ID_BLOCK: do_blk(d, cmdline); break;
		case VIRTIO_ID_NET: do_net(d, cmdline); break;
		case VIRTIO_ID_CONSOLE: do_console(d, cmdline); break;
		case VIRTIO_ID_RNG: do_rng(d); break;
		default: break;
		}
		CHECK(!(virtio_status(d) & VIRTIO_STATUS_NEEDS_RESET), "slot %d needs reset\n", i);
	}
	if (irq)
		printf("virtio: %u interrupts\n", virtio_irq_count());
	printf("virtio: %s\n", failures ? "FAILED" : "all checks passed");
	return failures ? 1 : 0;
}
