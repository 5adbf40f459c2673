#!/usr/bin/python3
"""A pass-through FUSE file system that fails IO on request, for the fault harness.

    faultfs.py BACKING MOUNT CONTROL

mounts MOUNT showing the files of BACKING. Every 50 ms it reads CONTROL, one line:

    none                 pass everything through
    eio-write P          each write and fsync fails with EIO with probability P%
    eio-read P           each read fails with EIO with probability P%
    short-write P        each write stores only its first half and says so (a short
                         write, as a device that tears a request), with probability P%

and writes CONTROL.count with the number of faults injected so far. Files are opened on the
backing file system without O_DIRECT (the daemon's buffers are not aligned) and every write
is followed by fdatasync, so what the node is told is durable is. Needs Debian's
python3-fusepy (libfuse2) and /dev/fuse; runs in the foreground until unmounted.
"""

import errno
import os
import random
import sys
import threading
import time

import fusepy as fuse


class FaultFs(fuse.Operations):
    def __init__(self, backing, control):
        self.backing = backing
        self.control = control
        self.mode = ("none", 0)
        self.injected = 0
        self.lock = threading.Lock()
        self.rng = random.Random(int.from_bytes(os.urandom(8), "little"))
        threading.Thread(target=self.watch, daemon=True).start()

    def watch(self):
        while True:
            try:
                with open(self.control) as f:
                    words = f.read().split()
                mode = (words[0], int(words[1]) if len(words) > 1 else 0) if words else ("none", 0)
            except (OSError, ValueError):
                mode = ("none", 0)
            with self.lock:
                self.mode = mode
                count = self.injected
            tmp = self.control + ".count.tmp"
            with open(tmp, "w") as f:
                f.write(str(count))
            os.replace(tmp, self.control + ".count")
            time.sleep(0.05)

    def hit(self, kind):
        with self.lock:
            name, percent = self.mode
            if name == kind and self.rng.randrange(100) < percent:
                self.injected += 1
                return True
        return False

    def real(self, path):
        return os.path.join(self.backing, path.lstrip("/"))

    # Metadata.
    def getattr(self, path, fh=None):
        st = os.lstat(self.real(path))
        keys = ("st_atime", "st_ctime", "st_gid", "st_mode", "st_mtime", "st_nlink", "st_size",
                "st_uid", "st_blocks")
        return {k: getattr(st, k) for k in keys}

    def readdir(self, path, fh):
        return [".", ".."] + os.listdir(self.real(path))

    def statfs(self, path):
        st = os.statvfs(self.real(path))
        keys = ("f_bavail", "f_bfree", "f_blocks", "f_bsize", "f_favail", "f_ffree", "f_files",
                "f_flag", "f_frsize", "f_namemax")
        return {k: getattr(st, k) for k in keys}

    def mkdir(self, path, mode):
        os.mkdir(self.real(path), mode)

    def rmdir(self, path):
        os.rmdir(self.real(path))

    def unlink(self, path):
        os.unlink(self.real(path))

    def rename(self, old, new):
        os.rename(self.real(old), self.real(new))

    def chmod(self, path, mode):
        os.chmod(self.real(path), mode)

    def chown(self, path, uid, gid):
        os.chown(self.real(path), uid, gid)

    def utimens(self, path, times=None):
        os.utime(self.real(path), times)

    def truncate(self, path, length, fh=None):
        if fh is not None:
            os.ftruncate(fh, length)
        else:
            os.truncate(self.real(path), length)

    # Data.
    @staticmethod
    def flags(flags):
        return flags & ~getattr(os, "O_DIRECT", 0)

    def open(self, path, flags):
        return os.open(self.real(path), self.flags(flags))

    def create(self, path, mode, fi=None):
        return os.open(self.real(path), os.O_RDWR | os.O_CREAT, mode)

    def read(self, path, size, offset, fh):
        if self.hit("eio-read"):
            raise fuse.FuseOSError(errno.EIO)
        return os.pread(fh, size, offset)

    def write(self, path, data, offset, fh):
        if self.hit("eio-write"):
            raise fuse.FuseOSError(errno.EIO)
        if len(data) > 1 and self.hit("short-write"):
            data = data[: len(data) // 2]
        n = os.pwrite(fh, data, offset)
        os.fdatasync(fh)
        return n

    def flush(self, path, fh):
        return 0

    def fsync(self, path, datasync, fh):
        if self.hit("eio-write"):
            raise fuse.FuseOSError(errno.EIO)
        os.fsync(fh)
        return 0

    def fsyncdir(self, path, datasync, fh):
        return 0

    def release(self, path, fh):
        os.close(fh)
        return 0


def main():
    backing, mount, control = sys.argv[1:4]
    fuse.FUSE(FaultFs(os.path.abspath(backing), os.path.abspath(control)), mount,
              foreground=True, nothreads=False, allow_other=True, direct_io=True)


if __name__ == "__main__":
    main()
