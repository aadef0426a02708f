/*
 * rtc: reads the date and time from the CMOS RTC (index port 0x70, data
 * port 0x71; bit 7 of the index, NMI disable, is always written as 0).
 *
 * Reading: wait while register A's UIP bit (0x80) is set, read seconds (0),
 * minutes (2), hours (4), day (7), month (8), year (9) and century (0x32),
 * and repeat until two reads in a row agree. Register B bit 2 set means
 * binary, clear means BCD; bit 1 set means 24-hour, clear means 12-hour
 * with bit 7 of the hours register as PM. Century register 0 means 20xx.
 *
 * Options:
 *   wait=S   after the first reading, wait S seconds of RTC time (default
 *            0): select register 0 once, then poll port 0x71 (one port
 *            exit per poll, so virtual time advances) until the seconds
 *            value has changed S times; then read and print again.
 *
 * Output:
 *     rtc: YYYY-MM-DD HH:MM:SS
 * and with S > 0 also
 *     rtc: waited S s in P polls
 *     rtc: YYYY-MM-DD HH:MM:SS            (the first time plus S seconds)
 * Exit 0. Exit 1 after a line "rtc: FAIL: ..." when register A's UIP never
 * clears (100000 polls; a missing RTC reads 0xff), the reads never agree,
 * a field is out of range, the seconds do not change S times within
 * S * 10^9 polls (a guard against a stopped clock, sized for fast
 * emulators; in lunavm, --max-time is the practical bound), or the second
 * reading is not the first plus S seconds (modulo a day). S above 86399 is
 * refused with exit 0x5f.
 *
 * Each poll is one port exit: at lunavm's 1 us of virtual time per exit,
 * waiting S seconds takes about S * 10^6 polls.
 */
#include "lunavm.h"

#define CMOS_INDEX 0x70
#define CMOS_DATA 0x71

#define REG_SECONDS 0x00
#define REG_MINUTES 0x02
#define REG_HOURS 0x04
#define REG_DAY 0x07
#define REG_MONTH 0x08
#define REG_YEAR 0x09
#define REG_A 0x0a
#define REG_B 0x0b
#define REG_CENTURY 0x32

#define REG_A_UIP 0x80
#define REG_B_24H 0x02
#define REG_B_BINARY 0x04

#define UIP_POLLS 100000
#define MAX_READS 10
#define POLLS_PER_SECOND 1000000000ull

struct rtc_time {
	uint8_t sec, min, hour, day, mon, year, century, b;
};

static uint8_t cmos_read(uint8_t reg)
{
	outb(CMOS_INDEX, reg);
	return inb(CMOS_DATA);
}

static bool wait_uip_clear(void)
{
	for (unsigned n = 0; n < UIP_POLLS; n++)
		if (!(cmos_read(REG_A) & REG_A_UIP))
			return true;
	return false;
}

static void read_raw(struct rtc_time *t)
{
	t->sec = cmos_read(REG_SECONDS);
	t->min = cmos_read(REG_MINUTES);
	t->hour = cmos_read(REG_HOURS);
	t->day = cmos_read(REG_DAY);
	t->mon = cmos_read(REG_MONTH);
	t->year = cmos_read(REG_YEAR);
	t->century = cmos_read(REG_CENTURY);
	t->b = cmos_read(REG_B);
}

static unsigned from_bcd(uint8_t v)
{
	return (v >> 4) * 10 + (v & 0xf);
}

struct date_time {
	unsigned year, mon, day, hour, min, sec;
};

/* Read a consistent set of registers and convert it; false after FAIL. */
static bool rtc_read(struct date_time *dt)
{
	struct rtc_time a, b;
	int n;

	if (!wait_uip_clear()) {
		printf("rtc: FAIL: update in progress never ends (register A 0x%02x)\n",
		       cmos_read(REG_A));
		return false;
	}
	read_raw(&a);
	for (n = 0; n < MAX_READS; n++) {
		if (!wait_uip_clear()) {
			printf("rtc: FAIL: update in progress never ends\n");
			return false;
		}
		read_raw(&b);
		if (!memcmp(&a, &b, sizeof(a)))
			break;
		a = b;
	}
	if (n == MAX_READS) {
		printf("rtc: FAIL: %d reads in a row disagree\n", MAX_READS);
		return false;
	}

	bool bcd = !(a.b & REG_B_BINARY);
	bool pm = !(a.b & REG_B_24H) && (a.hour & 0x80);
	uint8_t hour = (a.b & REG_B_24H) ? a.hour : (uint8_t)(a.hour & 0x7f);
	unsigned century;

	dt->sec = bcd ? from_bcd(a.sec) : a.sec;
	dt->min = bcd ? from_bcd(a.min) : a.min;
	dt->hour = bcd ? from_bcd(hour) : hour;
	dt->day = bcd ? from_bcd(a.day) : a.day;
	dt->mon = bcd ? from_bcd(a.mon) : a.mon;
	dt->year = bcd ? from_bcd(a.year) : a.year;
	century = bcd ? from_bcd(a.century) : a.century;
	if (!(a.b & REG_B_24H)) {
		/* 12-hour clock: 12 AM is 0, 12 PM is 12. */
		if (dt->hour == 12)
			dt->hour = 0;
		if (pm)
			dt->hour += 12;
	}
	if (dt->sec > 59 || dt->min > 59 || dt->hour > 23 || dt->day < 1 ||
	    dt->day > 31 || dt->mon < 1 || dt->mon > 12 || dt->year > 99 ||
	    century > 99) {
		printf("rtc: FAIL: bad value: sec 0x%02x min 0x%02x hour 0x%02x day "
		       "0x%02x month 0x%02x year 0x%02x century 0x%02x B 0x%02x\n",
		       a.sec, a.min, a.hour, a.day, a.mon, a.year, a.century, a.b);
		return false;
	}
	dt->year += (century ? century : 20) * 100;
	return true;
}

static void print_time(const struct date_time *dt)
{
	printf("rtc: %04u-%02u-%02u %02u:%02u:%02u\n", dt->year, dt->mon, dt->day,
	       dt->hour, dt->min, dt->sec);
}

static unsigned second_of_day(const struct date_time *dt)
{
	return (dt->hour * 60 + dt->min) * 60 + dt->sec;
}

int guest_main(const char *cmdline)
{
	uint64_t wait = cmdline_get_u64(cmdline, "wait", 0);
	struct date_time start, end;

	if (wait > 86399) {
		printf("rtc: bad wait %llu (0..86399)\n", (unsigned long long)wait);
		return 0x5f;
	}
	if (!rtc_read(&start))
		return 1;
	print_time(&start);
	if (!wait)
		return 0;

	/* Register 0 stays selected: one port exit (inb 0x71) per poll. */
	uint64_t polls = 0, limit = wait * POLLS_PER_SECOND;
	uint64_t changes = 0;
	outb(CMOS_INDEX, REG_SECONDS);
	uint8_t last = inb(CMOS_DATA);
	while (changes < wait) {
		uint8_t s = inb(CMOS_DATA);
		if (++polls > limit) {
			printf("rtc: FAIL: seconds changed %llu times in %llu polls\n",
			       (unsigned long long)changes, (unsigned long long)limit);
			return 1;
		}
		if (s != last) {
			last = s;
			changes++;
		}
	}
	printf("rtc: waited %llu s in %llu polls\n", (unsigned long long)wait,
	       (unsigned long long)polls);

	if (!rtc_read(&end))
		return 1;
	print_time(&end);
	unsigned elapsed = (second_of_day(&end) + 86400 - second_of_day(&start)) % 86400;
	if (elapsed != wait) {
		printf("rtc: FAIL: %u s passed, expected %llu\n", elapsed,
		       (unsigned long long)wait);
		return 1;
	}
	return 0;
}
