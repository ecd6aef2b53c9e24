# IPython configuration of gpulab's environment (installed as <env>/etc/ipython/), read by
# every kernel and IPython shell there before the user's own profile.
c = get_config()  # noqa: F821 -- given by IPython when it reads this file

# %%gpulab_job and %gpulab_jobs in every notebook (gpulab.magics). extra_extensions, not
# extensions: a user's profile that sets its own list of extensions keeps gpulab's.
c.InteractiveShellApp.extra_extensions.append("gpulab.magics")
