/* A small virtio-mmio driver for test guests: see virtio.h. */
#include "lunavm.h"
#include "virtio.h"

static uint32_t rd(struct virtio_dev *d, unsigned off)
{
	return mmio_read32(d->base + off);
}

static void wr(struct virtio_dev *d, unsigned off, uint32_t v)
{
	mmio_write32(d->base + off, v);
}

static uint64_t parse_num(const char **p)
{
	const char *s = *p;
	size_t n = 0;
	uint64_t v = 0;
	if (s[0] == '0' && (s[1] == 'x' || s[1] == 'X'))
		n = 2;
	while (s[n] && ((s[n] >= '0' && s[n] <= '9') || (s[n] >= 'a' && s[n] <= 'f') ||
			(s[n] >= 'A' && s[n] <= 'F') || (n == 1 && (s[n] == 'x' || s[n] == 'X'))))
		n++;
	if (!parse_u64(s, n, &v))
		v = 0;
	*p = s + n;
	return v;
}

int virtio_find(const char *cmdline, struct virtio_dev *devs, int max)
{
	static const char key[] = "virtio_mmio.device=";
	const size_t klen = sizeof(key) - 1;
	int found = 0;
	const char *p = cmdline;
	while (*p && found < max) {
		while (*p == ' ')
			p++;
		if (strncmp(p, key, klen) == 0) {
			const char *s = p + klen;
			uint64_t size = parse_num(&s);
			if (*s == 'K' || *s == 'k') {
				size <<= 10;
				s++;
			} else if (*s == 'M' || *s == 'm') {
				size <<= 20;
				s++;
			}
			if (*s == '@') {
				s++;
				uint64_t base = parse_num(&s);
				uint64_t irq = 0;
				if (*s == ':') {
					s++;
					irq = parse_num(&s);
				}
				memset(&devs[found], 0, sizeof(devs[found]));
				devs[found].base = (uintptr_t)base;
				devs[found].size = (uint32_t)size;
				devs[found].irq = (uint32_t)irq;
				found++;
			}
		}
		while (*p && *p != ' ')
			p++;
	}
	return found;
}

const char *virtio_id_name(uint32_t id)
{
	switch (id) {
	case VIRTIO_ID_NET: return "net";
	case VIRTIO_ID_BLOCK: return "blk";
	case VIRTIO_ID_CONSOLE: return "console";
	case VIRTIO_ID_RNG: return "rng";
	default: return "?";
	}
}

int virtio_init(struct virtio_dev *d, uint64_t wanted)
{
	if (rd(d, VIRTIO_MMIO_MAGIC) != 0x74726976)
		return -1;
	if (rd(d, VIRTIO_MMIO_VERSION) != 2)
		return -2;
	d->device_id = rd(d, VIRTIO_MMIO_DEVICE_ID);
	if (d->device_id == 0)
		return -3;
	wr(d, VIRTIO_MMIO_STATUS, 0);
	wr(d, VIRTIO_MMIO_STATUS, VIRTIO_STATUS_ACKNOWLEDGE);
	wr(d, VIRTIO_MMIO_STATUS, VIRTIO_STATUS_ACKNOWLEDGE | VIRTIO_STATUS_DRIVER);
	wr(d, VIRTIO_MMIO_DEVICE_FEATURES_SEL, 0);
	uint64_t offered = rd(d, VIRTIO_MMIO_DEVICE_FEATURES);
	wr(d, VIRTIO_MMIO_DEVICE_FEATURES_SEL, 1);
	offered |= (uint64_t)rd(d, VIRTIO_MMIO_DEVICE_FEATURES) << 32;
	d->features = (wanted | VIRTIO_F_VERSION_1) & offered;
	wr(d, VIRTIO_MMIO_DRIVER_FEATURES_SEL, 0);
	wr(d, VIRTIO_MMIO_DRIVER_FEATURES, (uint32_t)d->features);
	wr(d, VIRTIO_MMIO_DRIVER_FEATURES_SEL, 1);
	wr(d, VIRTIO_MMIO_DRIVER_FEATURES, (uint32_t)(d->features >> 32));
	wr(d, VIRTIO_MMIO_STATUS, VIRTIO_STATUS_ACKNOWLEDGE | VIRTIO_STATUS_DRIVER |
				  VIRTIO_STATUS_FEATURES_OK);
	if (!(rd(d, VIRTIO_MMIO_STATUS) & VIRTIO_STATUS_FEATURES_OK))
		return -4;
	return 0;
}

int virtio_queue_setup(struct virtio_dev *d, unsigned idx)
{
	if (idx >= VIRTIO_MAX_QUEUES)
		return -1;
	struct virtq *q = &d->q[idx];
	wr(d, VIRTIO_MMIO_QUEUE_SEL, idx);
	if (rd(d, VIRTIO_MMIO_QUEUE_READY) != 0 || rd(d, VIRTIO_MMIO_QUEUE_NUM_MAX) < VIRTQ_SIZE)
		return -1;
	memset(q, 0, sizeof(*q));
	wr(d, VIRTIO_MMIO_QUEUE_NUM, VIRTQ_SIZE);
	uint64_t desc = (uintptr_t)q->desc, avail = (uintptr_t)&q->avail,
		 used = (uintptr_t)&q->used;
	wr(d, VIRTIO_MMIO_QUEUE_DESC_LOW, (uint32_t)desc);
	wr(d, VIRTIO_MMIO_QUEUE_DESC_HIGH, (uint32_t)(desc >> 32));
	wr(d, VIRTIO_MMIO_QUEUE_DRIVER_LOW, (uint32_t)avail);
	wr(d, VIRTIO_MMIO_QUEUE_DRIVER_HIGH, (uint32_t)(avail >> 32));
	wr(d, VIRTIO_MMIO_QUEUE_DEVICE_LOW, (uint32_t)used);
	wr(d, VIRTIO_MMIO_QUEUE_DEVICE_HIGH, (uint32_t)(used >> 32));
	wr(d, VIRTIO_MMIO_QUEUE_READY, 1);
	q->ready = true;
	return 0;
}

void virtio_driver_ok(struct virtio_dev *d)
{
	wr(d, VIRTIO_MMIO_STATUS, rd(d, VIRTIO_MMIO_STATUS) | VIRTIO_STATUS_DRIVER_OK);
}

uint32_t virtio_status(struct virtio_dev *d)
{
	return rd(d, VIRTIO_MMIO_STATUS);
}

static volatile uint32_t irq_count;

static void virtio_irq(struct irq_frame *frame)
{
	unsigned line = frame->vector - 0x20;
	irq_count++;
	if (line >= 8)
		outb(0xa0, 0x20);
	outb(0x20, 0x20);
}

uint32_t virtio_irq_count(void)
{
	return irq_count;
}

void virtio_use_irq(struct virtio_dev *d)
{
	unsigned line = d->irq & 15;
	/* Remap the PIC pair to 0x20/0x28 and unmask only this line (and the cascade). */
	outb(0x20, 0x11);
	outb(0xa0, 0x11);
	outb(0x21, 0x20);
	outb(0xa1, 0x28);
	outb(0x21, 4);
	outb(0xa1, 2);
	outb(0x21, 1);
	outb(0xa1, 1);
	uint8_t m1 = 0xff & ~(1u << 2), m2 = 0xff;
	if (line < 8)
		m1 &= (uint8_t)~(1u << line);
	else
		m2 &= (uint8_t)~(1u << (line - 8));
	outb(0x21, m1);
	outb(0xa1, m2);
	idt_set_handler(0x20 + line, virtio_irq);
	d->use_irq = true;
}

int virtq_post(struct virtio_dev *d, unsigned idx, const struct virtio_buf *bufs, int n)
{
	struct virtq *q = &d->q[idx];
	uint16_t head = q->next_desc;
	for (int i = 0; i < n; i++) {
		uint16_t at = (uint16_t)((head + i) % VIRTQ_SIZE);
		q->desc[at].addr = (uintptr_t)bufs[i].addr;
		q->desc[at].len = bufs[i].len;
		q->desc[at].flags = (uint16_t)((i + 1 < n ? VIRTQ_DESC_F_NEXT : 0) |
					       (bufs[i].write ? VIRTQ_DESC_F_WRITE : 0));
		q->desc[at].next = (uint16_t)((at + 1) % VIRTQ_SIZE);
	}
	q->next_desc = (uint16_t)((head + n) % VIRTQ_SIZE);
	q->irq_seen = irq_count;
	q->avail.ring[q->avail.idx % VIRTQ_SIZE] = head;
	__asm__ volatile("" : : : "memory");
	q->avail.idx++;
	__asm__ volatile("mfence" : : : "memory");
	return head;
}

void virtq_notify(struct virtio_dev *d, unsigned idx)
{
	wr(d, VIRTIO_MMIO_QUEUE_NOTIFY, idx);
}

int virtq_submit(struct virtio_dev *d, unsigned idx, const struct virtio_buf *bufs, int n)
{
	int head = virtq_post(d, idx, bufs, n);
	virtq_notify(d, idx);
	return head;
}

int virtq_wait(struct virtio_dev *d, unsigned idx, uint32_t *len, uint64_t spins)
{
	struct virtq *q = &d->q[idx];
	for (uint64_t i = 0; spins == 0 || i < spins; i++) {
		__asm__ volatile("" : : : "memory");
		bool used = *(volatile uint16_t *)&q->used.idx != q->last_used;
		/* With interrupts, the request is done when both the used entry and
		 * an interrupt since the submission have arrived. */
		if (used && (!d->use_irq || irq_count != q->irq_seen)) {
			struct virtq_used_elem e = q->used.ring[q->last_used % VIRTQ_SIZE];
			q->last_used++;
			if (len)
				*len = e.len;
			if (d->use_irq)
				wr(d, VIRTIO_MMIO_INTERRUPT_ACK, rd(d, VIRTIO_MMIO_INTERRUPT_STATUS));
			return (int)e.id;
		}
		if (d->use_irq)
			__asm__ volatile("sti; hlt; cli" : : : "memory");
		else
			__asm__ volatile("pause");
	}
	return -1;
}

uint8_t virtio_config8(struct virtio_dev *d, unsigned off)
{
	return mmio_read8(d->base + VIRTIO_MMIO_CONFIG + off);
}

uint32_t virtio_config32(struct virtio_dev *d, unsigned off)
{
	return mmio_read32(d->base + VIRTIO_MMIO_CONFIG + off);
}

uint64_t virtio_config64(struct virtio_dev *d, unsigned off)
{
	return (uint64_t)virtio_config32(d, off) | (uint64_t)virtio_config32(d, off + 4) << 32;
}
