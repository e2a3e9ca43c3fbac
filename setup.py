"""Only here to ship `fewshot_lmeval.pth` (everything else is in pyproject.toml).

The .pth file lands at the top of site-packages, where Python runs its one `import` line at
start-up: that is what lets a bare `lm_eval --model fewshot` find our backend (see
fewshot/lmeval_hook.py). setuptools has no declarative way to put a file there, so build_py
copies it into the wheel's root, for wheels and editable installs alike.
"""

from pathlib import Path

from setuptools import setup
from setuptools.command.build_py import build_py

PTH = "fewshot_lmeval.pth"


class BuildPyWithPth(build_py):
    def run(self) -> None:
        super().run()
        # An editable install's wheel is unpacked from `install_lib`, not from build_lib.
        root = self.distribution.get_command_obj("install").install_lib if self.editable_mode else self.build_lib
        self.copy_file(PTH, str(Path(root, PTH)), preserve_mode=False)

    def get_outputs(self, include_bytecode: bool = True) -> list[str]:
        return [*super().get_outputs(include_bytecode), str(Path(self.build_lib, PTH))]


setup(cmdclass={"build_py": BuildPyWithPth})
