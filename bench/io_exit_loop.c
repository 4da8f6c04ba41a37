/*
 * The C baseline of bench/io_exit.py: time KVM_RUN round trips that each end in an OUT exit.
 *
 * Usage: io_exit_loop IMAGE TIMEOUT_SECONDS, then one command per line on stdin:
 *   N  (N > 0)  run N exits and print "ns_per_exit <float>" (time per exit of those N);
 *   0 or EOF    print "sink <n>" and exit.
 * So bench/io_exit.py can interleave the C repetitions with its Python loops.
 *
 * IMAGE is written by bench/io_exit.py from a vCPU that hvcore set up (tests.boot.boot):
 *   "HVBENCH1" | u32 ram_size | u32 sregs_size | u32 regs_size | u32 reserved
 *   | struct kvm_sregs | struct kvm_regs | ram_size bytes of guest RAM (mapped at guest-physical 0)
 * This program opens /dev/kvm itself and builds the same VM: slot 0 = the RAM, vCPU 0, CPUID =
 * KVM_GET_SUPPORTED_CPUID (as tests.boot does), then those sregs and regs. Every exit is checked
 * (KVM_EXIT_IO, OUT, port 0x80, size 1, count 1) and its data byte read.
 * Watchdog: each command must finish within TIMEOUT_SECONDS; SIGALRM then interrupts KVM_RUN.
 * Exit status: 0 ok, 1 usage/setup error, 2 unexpected exit, 3 watchdog.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <linux/kvm.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <time.h>
#include <unistd.h>

#define MAX_CPUID 256

static volatile sig_atomic_t watchdog_fired;
static struct kvm_run *volatile run_area;

static void on_alarm(int sig)
{
    (void)sig;
    watchdog_fired = 1;
    if (run_area)
        run_area->immediate_exit = 1;
}

static void die(const char *what)
{
    fprintf(stderr, "io_exit_loop: %s: %s\n", what, strerror(errno));
    exit(1);
}

static int read_all(int fd, void *buf, size_t len)
{
    char *p = buf;
    while (len) {
        ssize_t n = read(fd, p, len);
        if (n <= 0)
            return -1;
        p += n;
        len -= (size_t)n;
    }
    return 0;
}

static uint64_t now_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec;
}

/* Run `count` exits; returns 0, or the exit status to fail with. */
static int run_exits(int vcpu, struct kvm_run *run, long count, unsigned *sink)
{
    for (long i = 0; i < count; i++) {
        if (ioctl(vcpu, KVM_RUN, 0) < 0) {
            if (errno == EINTR && watchdog_fired) {
                fprintf(stderr, "io_exit_loop: watchdog: KVM_RUN interrupted after the timeout\n");
                return 3;
            }
            if (errno == EINTR) { /* a stray signal: this round trip did not happen */
                i--;
                continue;
            }
            fprintf(stderr, "io_exit_loop: KVM_RUN: %s\n", strerror(errno));
            return 1;
        }
        if (run->exit_reason != KVM_EXIT_IO || run->io.direction != KVM_EXIT_IO_OUT || run->io.port != 0x80 ||
            run->io.size != 1 || run->io.count != 1) {
            fprintf(stderr, "io_exit_loop: unexpected exit: reason %u port %#x direction %u size %u count %u\n",
                    run->exit_reason, run->io.port, run->io.direction, run->io.size, run->io.count);
            return 2;
        }
        *sink += *((volatile uint8_t *)run + run->io.data_offset);
    }
    return 0;
}

int main(int argc, char **argv)
{
    if (argc != 3) {
        fprintf(stderr, "usage: %s IMAGE TIMEOUT_SECONDS (then exit counts on stdin)\n", argv[0]);
        return 1;
    }
    unsigned timeout = (unsigned)atoi(argv[2]);
    if (timeout == 0) {
        fprintf(stderr, "io_exit_loop: TIMEOUT_SECONDS must be > 0\n");
        return 1;
    }

    struct sigaction sa;
    memset(&sa, 0, sizeof sa);
    sa.sa_handler = on_alarm; /* no SA_RESTART: KVM_RUN fails with EINTR */
    sigaction(SIGALRM, &sa, NULL);
    alarm(timeout);

    int image = open(argv[1], O_RDONLY);
    if (image < 0)
        die("open image");
    char magic[8];
    uint32_t header[4];
    struct kvm_sregs sregs;
    struct kvm_regs regs;
    if (read_all(image, magic, sizeof magic) || memcmp(magic, "HVBENCH1", 8) ||
        read_all(image, header, sizeof header)) {
        fprintf(stderr, "io_exit_loop: %s is not a bench image\n", argv[1]);
        return 1;
    }
    if (header[1] != sizeof sregs || header[2] != sizeof regs || header[0] == 0 || header[0] % 4096) {
        fprintf(stderr, "io_exit_loop: image layout mismatch (sregs %u/%zu, regs %u/%zu, ram %u)\n", header[1],
                sizeof sregs, header[2], sizeof regs, header[0]);
        return 1;
    }
    size_t ram_size = header[0];
    void *ram = mmap(NULL, ram_size, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
    if (ram == MAP_FAILED)
        die("mmap ram");
    if (read_all(image, &sregs, sizeof sregs) || read_all(image, &regs, sizeof regs) ||
        read_all(image, ram, ram_size)) {
        fprintf(stderr, "io_exit_loop: %s is truncated\n", argv[1]);
        return 1;
    }
    close(image);

    int kvm = open("/dev/kvm", O_RDWR | O_CLOEXEC);
    if (kvm < 0)
        die("open /dev/kvm");
    if (ioctl(kvm, KVM_GET_API_VERSION, 0) != KVM_API_VERSION) {
        fprintf(stderr, "io_exit_loop: KVM API version is not %d\n", KVM_API_VERSION);
        return 1;
    }
    int vm = ioctl(kvm, KVM_CREATE_VM, 0);
    if (vm < 0)
        die("KVM_CREATE_VM");
    struct kvm_userspace_memory_region region = {
        .slot = 0, .flags = 0, .guest_phys_addr = 0, .memory_size = ram_size, .userspace_addr = (uint64_t)ram};
    if (ioctl(vm, KVM_SET_USER_MEMORY_REGION, &region) < 0)
        die("KVM_SET_USER_MEMORY_REGION");
    int vcpu = ioctl(vm, KVM_CREATE_VCPU, 0);
    if (vcpu < 0)
        die("KVM_CREATE_VCPU");
    int mmap_size = ioctl(kvm, KVM_GET_VCPU_MMAP_SIZE, 0);
    if (mmap_size <= 0)
        die("KVM_GET_VCPU_MMAP_SIZE");
    struct kvm_run *run = mmap(NULL, (size_t)mmap_size, PROT_READ | PROT_WRITE, MAP_SHARED, vcpu, 0);
    if (run == MAP_FAILED)
        die("mmap kvm_run");
    run_area = run;

    struct kvm_cpuid2 *cpuid = calloc(1, sizeof *cpuid + MAX_CPUID * sizeof(struct kvm_cpuid_entry2));
    if (!cpuid)
        die("calloc");
    cpuid->nent = MAX_CPUID;
    if (ioctl(kvm, KVM_GET_SUPPORTED_CPUID, cpuid) < 0)
        die("KVM_GET_SUPPORTED_CPUID");
    if (ioctl(vcpu, KVM_SET_CPUID2, cpuid) < 0)
        die("KVM_SET_CPUID2");
    if (ioctl(vcpu, KVM_SET_SREGS, &sregs) < 0)
        die("KVM_SET_SREGS");
    if (ioctl(vcpu, KVM_SET_REGS, &regs) < 0)
        die("KVM_SET_REGS");
    alarm(0);
    printf("ready\n");
    fflush(stdout);

    unsigned sink = 0;
    long exits;
    while (scanf("%ld", &exits) == 1 && exits > 0) {
        alarm(timeout);
        uint64_t start = now_ns();
        int status = run_exits(vcpu, run, exits, &sink);
        uint64_t elapsed = now_ns() - start;
        alarm(0);
        if (status != 0)
            return status;
        printf("ns_per_exit %.3f\n", (double)elapsed / (double)exits);
        fflush(stdout);
    }
    printf("sink %u\n", sink);
    return 0;
}
