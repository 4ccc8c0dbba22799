"""Container runtimes: Apptainer/Singularity where the site has them, bubblewrap otherwise."""
