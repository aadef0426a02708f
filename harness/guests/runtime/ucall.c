/* ucall helpers (see ucall.h for the ABI). */
#include "lunavm.h"

void ucall_init(struct lunavm_ucall *uc, uint32_t cmd)
{
	memset(uc, 0, sizeof(*uc));
	uc->magic = LUNAVM_UCALL_MAGIC;
	uc->version = LUNAVM_UCALL_VERSION;
	uc->cmd = (uint16_t)cmd;
}

void ucall_send(struct lunavm_ucall *uc)
{
	if (uc->nargs > LUNAVM_UCALL_MAX_ARGS)
		uc->nargs = LUNAVM_UCALL_MAX_ARGS;
	uc->msg[LUNAVM_UCALL_MSG_SIZE - 1] = '\0';
	uc->msg_len = (uint32_t)strlen(uc->msg);
	ucall_raw(uc->cmd, uc);
}

void ucall_array(uint32_t cmd, uint32_t nargs, const uint64_t *args)
{
	struct lunavm_ucall uc;

	ucall_init(&uc, cmd);
	if (nargs > LUNAVM_UCALL_MAX_ARGS)
		nargs = LUNAVM_UCALL_MAX_ARGS;
	uc.nargs = nargs;
	for (uint32_t i = 0; i < nargs; i++)
		uc.args[i] = args[i];
	ucall_send(&uc);
}

void ucall_done(int status)
{
	ucall(UCALL_DONE, 1, (uint64_t)(int64_t)status);
	guest_exit(status);
}

void ucall_print(const char *fmt, ...)
{
	struct lunavm_ucall uc;
	va_list ap;

	ucall_init(&uc, UCALL_PRINT);
	va_start(ap, fmt);
	vsnprintf(uc.msg, sizeof(uc.msg), fmt, ap);
	va_end(ap);
	ucall_send(&uc);
}

void ucall_sync(uint64_t id)
{
	ucall(UCALL_SYNC, 1, id);
}

void ucall_fuzz_point(void *buf, uint64_t capacity)
{
	ucall(UCALL_FUZZ_POINT, 2, (uintptr_t)buf, capacity);
}

void ucall_cov_map(void *map, uint64_t size)
{
	ucall(UCALL_COV_MAP, 2, (uintptr_t)map, size);
}

void ucall_cmp(uint64_t a, uint64_t b, uint32_t size, uint64_t pc)
{
	ucall(UCALL_CMP, 4, a, b, size, pc);
}

void lunavm_assert_fail(const char *file, uint32_t line, const char *expr,
			uint64_t left, uint64_t right)
{
	struct lunavm_ucall uc;

	printf("GUEST_ASSERT failed: %s:%u: %s (left=0x%llx right=0x%llx)\n", file,
	       (unsigned)line, expr, (unsigned long long)left,
	       (unsigned long long)right);
	ucall_init(&uc, UCALL_ASSERT);
	snprintf(uc.msg, sizeof(uc.msg), "%s:%u: %s", file, (unsigned)line, expr);
	uc.nargs = 3;
	uc.args[0] = line;
	uc.args[1] = left;
	uc.args[2] = right;
	ucall_send(&uc);
	guest_exit(LUNAVM_EXIT_ASSERT);
}
