/*
 * A small virtio-mmio driver for test guests (virtio 1.x, split queues).
 *
 * Devices are found the way Linux finds them without ACPI: from
 * "virtio_mmio.device=<size>@<base>:<irq>" words on the kernel command line
 * (lunavm adds one per device). Queues live in static memory; requests are
 * submitted and then either polled (the used ring is read until the device
 * returns the buffer) or waited for with hlt when the device's interrupt is
 * routed through the 8259 PIC (virtio_use_irq).
 */
#ifndef LUNAVM_VIRTIO_H
#define LUNAVM_VIRTIO_H

#include <stdbool.h>
#include <stdint.h>

#define VIRTIO_MAX_DEVICES 8
#define VIRTIO_MAX_QUEUES 2
#define VIRTQ_SIZE 16

#define VIRTIO_ID_NET 1
#define VIRTIO_ID_BLOCK 2
#define VIRTIO_ID_CONSOLE 3
#define VIRTIO_ID_RNG 4

#define VIRTIO_F_VERSION_1 (1ull << 32)

#define VIRTIO_STATUS_ACKNOWLEDGE 1
#define VIRTIO_STATUS_DRIVER 2
#define VIRTIO_STATUS_DRIVER_OK 4
#define VIRTIO_STATUS_FEATURES_OK 8
#define VIRTIO_STATUS_NEEDS_RESET 0x40

/* virtio-mmio registers (virtio 1.1, 4.2.2). */
#define VIRTIO_MMIO_MAGIC 0x000
#define VIRTIO_MMIO_VERSION 0x004
#define VIRTIO_MMIO_DEVICE_ID 0x008
#define VIRTIO_MMIO_DEVICE_FEATURES 0x010
#define VIRTIO_MMIO_DEVICE_FEATURES_SEL 0x014
#define VIRTIO_MMIO_DRIVER_FEATURES 0x020
#define VIRTIO_MMIO_DRIVER_FEATURES_SEL 0x024
#define VIRTIO_MMIO_QUEUE_SEL 0x030
#define VIRTIO_MMIO_QUEUE_NUM_MAX 0x034
#define VIRTIO_MMIO_QUEUE_NUM 0x038
#define VIRTIO_MMIO_QUEUE_READY 0x044
#define VIRTIO_MMIO_QUEUE_NOTIFY 0x050
#define VIRTIO_MMIO_INTERRUPT_STATUS 0x060
#define VIRTIO_MMIO_INTERRUPT_ACK 0x064
#define VIRTIO_MMIO_STATUS 0x070
#define VIRTIO_MMIO_QUEUE_DESC_LOW 0x080
#define VIRTIO_MMIO_QUEUE_DESC_HIGH 0x084
#define VIRTIO_MMIO_QUEUE_DRIVER_LOW 0x090
#define VIRTIO_MMIO_QUEUE_DRIVER_HIGH 0x094
#define VIRTIO_MMIO_QUEUE_DEVICE_LOW 0x0a0
#define VIRTIO_MMIO_QUEUE_DEVICE_HIGH 0x0a4
#define VIRTIO_MMIO_CONFIG 0x100

#define VIRTQ_DESC_F_NEXT 1
#define VIRTQ_DESC_F_WRITE 2

struct virtq_desc {
	uint64_t addr;
	uint32_t len;
	uint16_t flags;
	uint16_t next;
};

struct virtq_avail {
	uint16_t flags;
	uint16_t idx;
	uint16_t ring[VIRTQ_SIZE];
};

struct virtq_used_elem {
	uint32_t id;
	uint32_t len;
};

struct virtq_used {
	uint16_t flags;
	uint16_t idx;
	struct virtq_used_elem ring[VIRTQ_SIZE];
};

struct virtq {
	struct virtq_desc desc[VIRTQ_SIZE] __attribute__((aligned(16)));
	struct virtq_avail avail __attribute__((aligned(2)));
	struct virtq_used used __attribute__((aligned(4)));
	uint16_t next_desc;  /* next free descriptor (used round-robin) */
	uint16_t last_used;  /* used entries consumed */
	uint32_t irq_seen;   /* interrupt count when the last request was posted */
	bool ready;
};

struct virtio_dev {
	uintptr_t base;
	uint32_t size;
	uint32_t irq;
	uint32_t device_id;
	uint64_t features;   /* negotiated */
	bool use_irq;        /* wait with hlt for the PIC-routed interrupt */
	struct virtq q[VIRTIO_MAX_QUEUES];
};

/* One buffer of a request. */
struct virtio_buf {
	void *addr;
	uint32_t len;
	bool write;          /* device-writable */
};

/*
 * Parses every virtio_mmio.device= word of cmdline into devs (up to max);
 * returns how many were found. Only base, size and irq are filled in.
 */
int virtio_find(const char *cmdline, struct virtio_dev *devs, int max);

/* The device's name for its id ("blk", "net", ...), "?" if unknown. */
const char *virtio_id_name(uint32_t id);

/*
 * Resets the device, checks magic/version, reads its id and negotiates
 * VERSION_1 plus the wanted features it offers. Returns 0, or a negative
 * step number on failure (-1 magic, -2 version, -3 no device, -4 features).
 */
int virtio_init(struct virtio_dev *d, uint64_t wanted);

/* Sets up queue idx with VIRTQ_SIZE entries. 0, or -1 if unavailable. */
int virtio_queue_setup(struct virtio_dev *d, unsigned idx);

/* Sets DRIVER_OK. */
void virtio_driver_ok(struct virtio_dev *d);

/* The device status register. */
uint32_t virtio_status(struct virtio_dev *d);

/*
 * Routes the device's interrupt through the 8259 PIC (remapped to vectors
 * 0x20-0x2f, only this line unmasked) and makes virtq_wait sleep with hlt.
 */
void virtio_use_irq(struct virtio_dev *d);

/* Interrupts taken on the device's line since boot (with virtio_use_irq). */
uint32_t virtio_irq_count(void);

/* Posts a chain of n buffers on queue idx and notifies; returns the head. */
int virtq_submit(struct virtio_dev *d, unsigned idx, const struct virtio_buf *bufs, int n);

/* Posts without notifying (several requests, then one virtq_notify). */
int virtq_post(struct virtio_dev *d, unsigned idx, const struct virtio_buf *bufs, int n);
void virtq_notify(struct virtio_dev *d, unsigned idx);

/*
 * Waits for the next used entry of queue idx, at most spins polls (0 = no
 * limit); returns its id and stores its length, or -1 when none came.
 */
int virtq_wait(struct virtio_dev *d, unsigned idx, uint32_t *len, uint64_t spins);

/* Configuration space accessors. */
uint8_t virtio_config8(struct virtio_dev *d, unsigned off);
uint32_t virtio_config32(struct virtio_dev *d, unsigned off);
uint64_t virtio_config64(struct virtio_dev *d, unsigned off);

#endif /* LUNAVM_VIRTIO_H */
