# Sourced by bench/gpu.sh and bench/device-check.sh: make the NVIDIA Vulkan driver
# reachable on a machine that may lack a Vulkan loader (no internet there): unpack
# libvulkan1 and glvnd from the Debian .debs in bench/debs/ into a temporary prefix
# when the system has no libvulkan.so.1, and point the loader at the NVIDIA ICD.
if ! ldconfig -p 2>/dev/null | grep -q 'libvulkan.so.1'; then
  prefix=$(mktemp -d)
  for deb in bench/debs/*.deb; do dpkg-deb -x "$deb" "$prefix"; done
  export LD_LIBRARY_PATH="$prefix/usr/lib/x86_64-linux-gnu${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
  echo "# Vulkan loader unpacked from bench/debs into $prefix"
fi
if [ -z "${VK_DRIVER_FILES:-}${VK_ICD_FILENAMES:-}" ]; then
  for f in /usr/local/nvidia/share/vulkan/icd.d/nvidia_icd.json /usr/share/vulkan/icd.d/nvidia_icd.json \
           /etc/vulkan/icd.d/nvidia_icd.json /usr/share/vulkan/icd.d/nvidia_icd.x86_64.json; do
    if [ -f "$f" ]; then export VK_DRIVER_FILES="$f"; break; fi
  done
fi
if [ -z "${__EGL_VENDOR_LIBRARY_FILENAMES:-}" ] && [ -f /usr/local/nvidia/share/glvnd/egl_vendor.d/10_nvidia.json ]; then
  export __EGL_VENDOR_LIBRARY_FILENAMES=/usr/local/nvidia/share/glvnd/egl_vendor.d/10_nvidia.json
fi
export XDG_RUNTIME_DIR="${XDG_RUNTIME_DIR:-$(mktemp -d)}"

