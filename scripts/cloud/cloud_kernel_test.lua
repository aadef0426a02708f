-- Debian's stock cloud kernel (linux-image-*-cloud-amd64-unsigned, unmodified;
-- scripts/linux/fetch-cloud-kernel.sh) boots under lunavm, its initramfs
-- loads the package's own virtio_mmio and virtio_blk modules, and virtio_mmio
-- finds lunavm's virtio disk through ACPI (a `LNRO0005` device in the DSDT:
-- this kernel has no virtio_mmio command-line devices). The boot is long on
-- software-nested KVM (README, "Debian's stock cloud kernel"), so it runs
-- once in setup_once and every test starts from its snapshot.
local linux = require("lunavm.linux")

budget = { time = "600s", wall = "3600s" }

function setup_once()
  linux.boot_shell{
    files = linux.cloud_files(), mem = "512M", disks = { linux.rootfs() },
    timeout = "300s", shell_timeout = "300s",
  }
end

function test_the_kernel_is_debian_s_stock_cloud_kernel()
  local out = linux.shell_check("uname -r")
  t.eq(out, linux.cloud_files().version, "uname -r")
  t.match(serial.output(), "Linux version [^\r\n]*%(debian%-kernel@lists%.debian%.org%)")
end

function test_the_modules_came_from_the_package()
  local boot = serial.output()
  for _, m in ipairs({ "virtio_ring", "virtio", "virtio_mmio", "virtio_blk" }) do
    t.match(boot, "lunavm%-init: loaded " .. m .. "\r?\n", m .. " loaded by /init")
  end
  local mods = linux.shell_check("cut -d' ' -f1 /proc/modules | sort")
  t.eq(mods, "virtio\nvirtio_blk\nvirtio_mmio\nvirtio_ring", "/proc/modules")
end

function test_the_disk_was_found_through_acpi()
  -- The platform device virtio_mmio bound is the DSDT's LNRO0005 node.
  local devs = linux.shell_check("ls /sys/bus/platform/drivers/virtio-mmio")
  t.match(devs, "LNRO0005:00", "virtio-mmio's devices")
  local modalias = linux.shell_check("cat /sys/bus/platform/devices/LNRO0005:00/modalias")
  t.eq(modalias, "acpi:LNRO0005:", "bound through ACPI")
  local size = linux.shell_check("cat /sys/block/vda/size")
  local image = assert(io.open(linux.rootfs(), "rb"))
  local bytes = image:seek("end")
  image:close()
  t.eq(tonumber(size) * 512, bytes, "vda's size is the image's")
end

function test_the_disk_mounts_and_reads()
  local out = linux.shell_check("mkdir -p /tmp/d && mount -t ext2 -o ro /dev/vda /tmp/d && ls /tmp/d")
  t.match(out, "init", "the disk's /init through the mount")
  t.match(linux.shell_check("grep vda /proc/mounts"), "^/dev/vda /tmp/d ext2 ro")
end
