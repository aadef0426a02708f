-- Guest user mode on the test-suite Linux kernel: the busybox shell
-- initramfs (scripts/linux/build-initramfs.sh --kind shell), booted once to
-- its shell by setup_once and snapshotted; every test starts from the shell
-- and runs commands through lunavm.linux's shell helpers. On software-nested
-- KVM this needs lunavm's SYSCALL compatibility path (auto-detected).
local linux = require("lunavm.linux")
local net = require("lunavm.net")

budget = { time = "60s", wall = "600s" }

function setup_once()
  -- The root-disk image (ext2, /init) as a virtio disk the shell mounts.
  -- and a virtio-net card the kernel configures itself (ip=).
  local n = linux.NET
  linux.boot_shell{
    timeout = "40s", disks = { linux.rootfs() }, net = true,
    cmdline = string.format("ip=%s::%s:%s::eth0:off", n.guest, n.host, n.mask),
  }
end

function test_a_ping_from_the_shell_gets_lua_s_reply()
  local host = { mac = net.mac("52:54:00:12:34:56"), ip = net.ip(linux.NET.host) }
  local fn, answered = net.responder(host)
  hook.virtio{ dev = "net", fn = fn }
  local out, status = linux.shell_run("ping -c 1 -W 5 " .. linux.NET.host, { timeout = "10s" })
  t.eq(status, 0, "ping's exit status: " .. out)
  t.match(out, "1 packets transmitted, 1 packets received")
  t.eq(answered.arp, 1, "the guest asked for the host's MAC once")
  t.eq(answered.echo, 1, "one echo request answered")
end

function test_a_file_on_a_virtio_disk()
  local out = linux.shell_check("mkdir -p /tmp/d && mount -t ext2 -o ro /dev/vda /tmp/d && ls /tmp/d")
  t.match(out, "init", "the disk's /init through the mount")
  out = linux.shell_check("grep vda /proc/mounts")
  t.match(out, "^/dev/vda /tmp/d ext2 ro", "/proc/mounts")
  out = linux.shell_check("wc -c < /tmp/d/init")
  t.ok(tonumber(out) and tonumber(out) > 0, "/init has bytes: " .. out)
end

function test_proc_cmdline_is_the_boot_command_line()
  local out, status = linux.shell_run("cat /proc/cmdline")
  t.eq(status, 0, "cat's exit status")
  local booted = serial.output():match("Command line: ([^\r\n]*)")
  t.eq(out, booted, "/proc/cmdline against the kernel's boot message")
  t.match(out, "console=ttyS0")
end

function test_meminfo_memtotal_is_plausible()
  local out = linux.shell_check("grep MemTotal /proc/meminfo")
  local kb = tonumber(out:match("^MemTotal:%s+(%d+) kB$"))
  t.ok(kb, "a MemTotal line: " .. out)
  -- 256 MiB of RAM, less what the kernel keeps for itself.
  t.ok(kb > 200 * 1024 and kb < 256 * 1024, "MemTotal " .. kb .. " kB")
end

function test_exit_statuses_come_back()
  local _, status = linux.shell_run("false")
  t.eq(status, 1, "false")
  _, status = linux.shell_run("true")
  t.eq(status, 0, "true")
  _, status = linux.shell_run("(exit 42)")
  t.eq(status, 42, "a subshell's exit 42")
  local out
  out, status = linux.shell_run("ls /nonexistent")
  t.eq(status, 1, "ls of a missing file")
  t.match(out, "No such file or directory")
end

function test_output_keeps_its_lines()
  local out = linux.shell_check("printf 'one\\ntwo\\n\\nfour\\n'")
  t.eq(out, "one\ntwo\n\nfour")
  t.eq(linux.shell_check("echo -n"), "", "no output")
end

function test_a_file_written_by_one_process_is_read_by_another()
  linux.shell_check("echo lunavm > /tmp/f && sync")
  t.eq(linux.shell_check("cat /tmp/f"), "lunavm")
  t.eq(linux.shell_check("wc -c < /tmp/f"), "7")
end

function test_syscalls_went_through_the_compatibility_path()
  local c = vm.syscall_compat()
  if not c.active then t.skip("this host runs SYSCALL itself (" .. c.probe_syscall .. ")") end
  local before = c.completed
  linux.shell_check("true")
  local after = vm.syscall_compat().completed
  t.ok(before > 100, "the boot to the shell made system calls: " .. before)
  t.ok(after > before, "a command makes more: " .. (after - before))
end
