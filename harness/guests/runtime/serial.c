/* 16550 UART on COM1 and a small printf. */
#include "lunavm.h"

#define UART_THR 0 /* transmit holding (DLAB=0) */
#define UART_RBR 0 /* receive buffer (DLAB=0) */
#define UART_DLL 0 /* divisor low (DLAB=1) */
#define UART_IER 1
#define UART_DLM 1 /* divisor high (DLAB=1) */
#define UART_FCR 2
#define UART_LCR 3
#define UART_MCR 4
#define UART_LSR 5
#define UART_LSR_DR 0x01   /* data ready */
#define UART_LSR_THRE 0x20 /* transmit holding register empty */

/* Bounded wait for THRE, so a missing UART cannot hang the guest. */
#define UART_TX_SPINS 100000

void serial_init(void)
{
	outb(LUNAVM_COM1 + UART_IER, 0x00);  /* no interrupts */
	outb(LUNAVM_COM1 + UART_LCR, 0x80);  /* DLAB */
	outb(LUNAVM_COM1 + UART_DLL, 0x01);  /* 115200 baud */
	outb(LUNAVM_COM1 + UART_DLM, 0x00);
	outb(LUNAVM_COM1 + UART_LCR, 0x03);  /* 8N1 */
	outb(LUNAVM_COM1 + UART_FCR, 0x07);  /* enable + clear FIFOs */
	outb(LUNAVM_COM1 + UART_MCR, 0x03);  /* DTR, RTS */
}

void serial_putc(char c)
{
	for (int i = 0; i < UART_TX_SPINS; i++)
		if (inb(LUNAVM_COM1 + UART_LSR) & UART_LSR_THRE)
			break;
	outb(LUNAVM_COM1 + UART_THR, (uint8_t)c);
}

void serial_write(const char *s, size_t len)
{
	for (size_t i = 0; i < len; i++)
		serial_putc(s[i]);
}

void serial_puts(const char *s)
{
	while (*s)
		serial_putc(*s++);
}

int serial_trygetc(void)
{
	if (inb(LUNAVM_COM1 + UART_LSR) & UART_LSR_DR)
		return inb(LUNAVM_COM1 + UART_RBR);
	return -1;
}

int serial_getc(void)
{
	int c;
	while ((c = serial_trygetc()) < 0)
		;
	return c;
}

/* ---- formatting ---- */

struct fmt_out {
	char *buf;     /* NULL: write to serial */
	size_t size;
	size_t pos;    /* bytes produced so far (may exceed size) */
};

static void fmt_putc(struct fmt_out *o, char c)
{
	if (!o->buf)
		serial_putc(c);
	else if (o->pos + 1 < o->size)
		o->buf[o->pos] = c;
	o->pos++;
}

/* Divide by 10 without libgcc (32-bit builds have no __udivdi3). */
static uint64_t divmod10(uint64_t n, unsigned *rem)
{
#ifdef __x86_64__
	*rem = (unsigned)(n % 10);
	return n / 10;
#else
	if (n <= 0xffffffffu) {
		uint32_t n32 = (uint32_t)n;
		*rem = n32 % 10;
		return n32 / 10;
	}
	uint64_t q = 0, r = 0;
	for (int bit = 63; bit >= 0; bit--) {
		r = (r << 1) | ((n >> bit) & 1);
		if (r >= 10) {
			r -= 10;
			q |= 1ull << bit;
		}
	}
	*rem = (unsigned)r;
	return q;
#endif
}

static void fmt_number(struct fmt_out *o, uint64_t v, unsigned base, bool upper,
		       bool neg, unsigned width, char pad)
{
	char tmp[24];
	int n = 0;
	const char *digits = upper ? "0123456789ABCDEF" : "0123456789abcdef";

	do {
		unsigned d;
		if (base == 16) {
			d = (unsigned)(v & 15);
			v >>= 4;
		} else {
			v = divmod10(v, &d);
		}
		tmp[n++] = digits[d];
	} while (v);
	if (neg)
		tmp[n++] = '-';
	/* Zero padding goes between the sign and the digits. */
	if (neg && pad == '0') {
		fmt_putc(o, tmp[--n]);
		if (width)
			width--;
	}
	for (unsigned i = (unsigned)n; i < width; i++)
		fmt_putc(o, pad);
	while (n)
		fmt_putc(o, tmp[--n]);
}

static void fmt_string(struct fmt_out *o, const char *s, unsigned width)
{
	size_t len = strlen(s);
	for (size_t i = len; i < width; i++)
		fmt_putc(o, ' ');
	while (*s)
		fmt_putc(o, *s++);
}

static void fmt(struct fmt_out *o, const char *f, va_list ap)
{
	for (; *f; f++) {
		if (*f != '%') {
			fmt_putc(o, *f);
			continue;
		}
		f++;
		char pad = ' ';
		unsigned width = 0;
		bool left = false;
		int lng = 0; /* 0: int, 1: long, 2: long long, 3: size_t */
		for (;; f++) {
			if (*f == '0')
				pad = '0';
			else if (*f == '-')
				left = true;
			else
				break;
		}
		while (*f >= '0' && *f <= '9')
			width = width * 10 + (unsigned)(*f++ - '0');
		if (*f == 'l') {
			lng = 1;
			if (*++f == 'l') {
				lng = 2;
				f++;
			}
		} else if (*f == 'z') {
			lng = 3;
			f++;
		}

		if (left)
			pad = ' ';
		size_t start = o->pos;
		unsigned w = left ? 0 : width; /* right-justify inside the converters */
		uint64_t u;
		switch (*f) {
		case 'd':
		case 'i': {
			int64_t s;
			if (lng == 2)
				s = va_arg(ap, long long);
			else if (lng == 1)
				s = va_arg(ap, long);
			else if (lng == 3)
				s = (int64_t)va_arg(ap, size_t);
			else
				s = va_arg(ap, int);
			u = s < 0 ? (uint64_t)0 - (uint64_t)s : (uint64_t)s;
			fmt_number(o, u, 10, false, s < 0, w, pad);
			break;
		}
		case 'u':
		case 'x':
		case 'X':
			if (lng == 2)
				u = va_arg(ap, unsigned long long);
			else if (lng == 1)
				u = va_arg(ap, unsigned long);
			else if (lng == 3)
				u = va_arg(ap, size_t);
			else
				u = va_arg(ap, unsigned int);
			fmt_number(o, u, *f == 'u' ? 10 : 16, *f == 'X', false, w, pad);
			break;
		case 'p':
			fmt_putc(o, '0');
			fmt_putc(o, 'x');
			fmt_number(o, (uintptr_t)va_arg(ap, void *), 16, false, false, w, pad);
			break;
		case 'c':
			fmt_putc(o, (char)va_arg(ap, int));
			break;
		case 's': {
			const char *s = va_arg(ap, const char *);
			fmt_string(o, s ? s : "(null)", w);
			break;
		}
		case '%':
			fmt_putc(o, '%');
			break;
		case '\0':
			return;
		default: /* unknown: print it verbatim */
			fmt_putc(o, '%');
			fmt_putc(o, *f);
			break;
		}
		while (left && o->pos - start < width)
			fmt_putc(o, ' ');
	}
}

int vsnprintf(char *buf, size_t size, const char *f, va_list ap)
{
	char dummy;
	struct fmt_out o = { size ? buf : &dummy, size, 0 };
	fmt(&o, f, ap);
	if (size)
		buf[o.pos < size ? o.pos : size - 1] = '\0';
	return (int)o.pos;
}

int snprintf(char *buf, size_t size, const char *f, ...)
{
	va_list ap;
	va_start(ap, f);
	int n = vsnprintf(buf, size, f, ap);
	va_end(ap);
	return n;
}

int vprintf(const char *f, va_list ap)
{
	struct fmt_out o = { NULL, 0, 0 };
	fmt(&o, f, ap);
	return (int)o.pos;
}

int printf(const char *f, ...)
{
	va_list ap;
	va_start(ap, f);
	int n = vprintf(f, ap);
	va_end(ap);
	return n;
}
